"""Hand-computed checks for genies.results.metrics."""

import math
import random

import numpy as np
import pytest

import genies.results.metrics as metrics
from genies.results.metrics import (
    accuracy,
    bootstrap_interval,
    brier_score,
    capable_differential_elicitation,
    differential_elicitation,
    elicitation,
    rms_calibration_error,
)

# First 60 values of random.Random(42).choice([0, 1]) (== random.seed(42); random.choice(...)).
# 25 ones among the 60.
L42 = [
    0, 0, 1, 0, 0, 0, 0, 0, 1, 0,
    0, 0, 0, 0, 0, 0, 1, 0, 1, 1,
    0, 0, 1, 1, 1, 0, 0, 1, 0, 0,
    1, 0, 1, 1, 1, 0, 1, 0, 1, 0,
    1, 1, 0, 0, 0, 0, 1, 0, 0, 0,
    1, 1, 1, 1, 0, 1, 1, 0, 1, 0,
]  # fmt: skip


# ------------------------------------------------------------------------------------------
# accuracy
# ------------------------------------------------------------------------------------------


def test_accuracy_hand_values():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy(np.array([1, 0])) == 0.5
    assert accuracy([0, 0, 0]) == 0.0
    assert isinstance(accuracy([1]), float)


@pytest.mark.parametrize("bad", [[], np.array([]), [0, 2], [0.5]])
def test_accuracy_rejects_empty_and_non_binary(bad):
    with pytest.raises(ValueError):
        accuracy(bad)


# ------------------------------------------------------------------------------------------
# bootstrap_interval
# ------------------------------------------------------------------------------------------


def test_bootstrap_degenerate_all_correct_and_all_wrong():
    groups = [0, 0, 1, 2, 2, 2]
    assert bootstrap_interval([1] * 6, groups) == (1.0, 1.0)
    assert bootstrap_interval([0] * 6, groups) == (0.0, 0.0)


def test_bootstrap_contains_point_and_is_deterministic():
    rng = np.random.default_rng(123)
    correct = rng.random(600) < 0.7
    groups = np.repeat(np.arange(200), 3)
    low, high = bootstrap_interval(correct, groups, seed=5)
    assert low <= accuracy(correct) <= high
    assert 0.0 < high - low < 0.2
    assert bootstrap_interval(correct, groups, seed=5) == (low, high)
    assert bootstrap_interval(correct, groups, seed=6) != (low, high)


def test_bootstrap_resamples_prompts_not_pairs():
    # Group 0 holds 50 pairs, all correct; groups 1..50 hold one incorrect pair each.
    # Point accuracy 50 / 100 = 0.5, over G = 51 prompts.
    correct = np.r_[np.ones(50), np.zeros(50)]
    groups = np.r_[np.zeros(50, dtype=int), np.arange(1, 51)]
    # Prompt-level: group 0 is drawn K ~ Binomial(51, 1/51) times. P(K = 0) = (50/51)**51 ~ 0.36
    # > 2.5 %, so the lower bound is exactly 0. P(K >= 3) ~ 0.08 > 2.5 % > P(K >= 4) ~ 0.02,
    # so the upper bound is about 150 / (150 + 48) = 0.758.
    low, high = bootstrap_interval(correct, groups)
    assert low == 0.0
    assert high == pytest.approx(150 / 198, abs=0.05)
    # Pair-level (one id per pair): about 0.5 +- 1.96 * 0.05, i.e. roughly (0.40, 0.60).
    pair_low, pair_high = bootstrap_interval(correct, np.arange(100))
    assert 0.35 < pair_low < 0.5 < pair_high < 0.65


def test_bootstrap_matches_explicit_pair_expansion():
    # Reference: draw the same (R, G) block of group indices, then rebuild each replicate
    # explicitly from the pairs of every drawn group.
    correct = np.array([1, 0, 1, 1, 0, 0, 1, 1, 1, 0])
    groups = np.array([3, 3, 7, 7, 7, 1, 1, 9, 2, 2])
    n_resamples, seed = 200, 11
    ids = np.unique(groups)
    drawn = np.random.default_rng(seed).integers(
        0, len(ids), size=(n_resamples, len(ids)), dtype=np.int32
    )
    replicate = []
    for row in drawn:
        pairs = np.concatenate([correct[groups == ids[g]] for g in row])
        replicate.append(pairs.mean())
    expected = np.quantile(replicate, [0.025, 0.975])
    got = bootstrap_interval(correct, groups, n_resamples=n_resamples, seed=seed)
    assert got == pytest.approx(tuple(expected))


def test_bootstrap_unpacked_path_matches_packed(monkeypatch):
    rng = np.random.default_rng(0)
    correct = rng.random(300) < 0.6
    groups = rng.integers(0, 80, size=300)
    packed = bootstrap_interval(correct, groups, n_resamples=300, seed=2)
    monkeypatch.setattr(metrics, "_PACK_LIMIT", 0)
    assert bootstrap_interval(correct, groups, n_resamples=300, seed=2) == packed


def test_bootstrap_group_labels_any_order_and_type():
    rng = np.random.default_rng(1)
    correct = rng.random(90) < 0.5
    groups = np.repeat(np.arange(30), 3)
    perm = rng.permutation(90)
    names = np.array([f"ex-{g:03d}" for g in groups])
    base = bootstrap_interval(correct, groups, n_resamples=500)
    assert bootstrap_interval(correct[perm], names[perm], n_resamples=500) == base


def test_bootstrap_wider_at_higher_confidence():
    rng = np.random.default_rng(4)
    correct = rng.random(400) < 0.6
    groups = np.arange(400) // 2
    lo90, hi90 = bootstrap_interval(correct, groups, confidence=0.9)
    lo99, hi99 = bootstrap_interval(correct, groups, confidence=0.99)
    assert lo99 <= lo90 and hi90 <= hi99


@pytest.mark.parametrize(
    "kwargs",
    [
        {"correct": [], "groups": []},
        {"correct": [1, 0], "groups": [0]},
        {"correct": [1, 0], "groups": [0, 1], "confidence": 1.0},
        {"correct": [1, 0], "groups": [0, 1], "confidence": 0.0},
        {"correct": [1, 0], "groups": [0, 1], "n_resamples": 0},
    ],
)
def test_bootstrap_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        bootstrap_interval(**kwargs)


# ------------------------------------------------------------------------------------------
# elicitation metrics
# ------------------------------------------------------------------------------------------


def test_elicitation_scalars_and_arrays():
    assert elicitation(0.6, 0.8) == pytest.approx(0.75)
    assert isinstance(elicitation(0.6, 0.8), float)
    out = elicitation(np.array([0.4, 0.9]), np.array([0.8, 0.9]))
    np.testing.assert_allclose(out, [0.5, 1.0])
    # broadcast a scalar capability over an array of accuracies
    np.testing.assert_allclose(elicitation([0.2, 0.5], 0.5), [0.4, 1.0])


def test_differential_elicitation_scalars_and_arrays():
    # (0.7 - 0.5) / 0.8 = 0.25
    assert differential_elicitation(0.7, 0.5, 0.8) == pytest.approx(0.25)
    # worse than zero-shot -> negative: (0.4 - 0.6) / 0.8 = -0.25
    assert differential_elicitation(0.4, 0.6, 0.8) == pytest.approx(-0.25)
    out = differential_elicitation(np.array([0.7, 0.9]), np.array([0.5, 0.6]), np.array([0.8, 1.0]))
    np.testing.assert_allclose(out, [0.25, 0.3])


def test_capable_differential_elicitation():
    # 1 - 0.6 / 0.8 = 0.25
    assert capable_differential_elicitation(0.6, 0.8) == pytest.approx(0.25)
    # mean(1 - 0.5/0.8, 1 - 0.6/0.75) = mean(0.375, 0.2) = 0.2875
    value = capable_differential_elicitation(np.array([0.5, 0.6]), np.array([0.8, 0.75]))
    assert value == pytest.approx(0.2875)
    assert isinstance(value, float)
    # equals DE at accuracy == capability, averaged
    base, cap = np.array([0.5, 0.6]), np.array([0.8, 0.75])
    assert value == pytest.approx(np.mean(differential_elicitation(cap, base, cap)))


@pytest.mark.parametrize("capability", [0.0, -0.1, np.array([0.8, 0.0]), float("nan")])
def test_elicitation_metrics_reject_nonpositive_capability(capability):
    with pytest.raises(ValueError, match="capability"):
        elicitation(0.5, capability)
    with pytest.raises(ValueError, match="capability"):
        differential_elicitation(0.5, 0.4, capability)
    with pytest.raises(ValueError, match="capability"):
        capable_differential_elicitation(0.4, capability)


# ------------------------------------------------------------------------------------------
# rms_calibration_error: standard
# ------------------------------------------------------------------------------------------


def test_rms_standard_hand_case():
    p = [0.55, 0.45, 0.95, 0.05, 0.92, 0.98]
    # confidence max(p, 1-p): 0.55 0.55 0.95 0.95 0.92 0.98
    # outcome (p > 0.5):       1    0    1    0    1    1
    # bin [0.5, 0.6): n=2, mean conf 0.55, acc 1/2 -> gap 0.05, gap^2 0.0025, weight 2/6
    # bin [0.9, 1.0]: n=4, mean conf 3.8/4 = 0.95, acc 3/4 -> gap 0.2, gap^2 0.04, weight 4/6
    # RMS = sqrt(0.0025/3 + 0.04*2/3) = sqrt(0.0275) = 0.16583...
    assert rms_calibration_error(p) == pytest.approx(math.sqrt(0.0275))
    assert rms_calibration_error(p, method="standard") == pytest.approx(0.165831, abs=1e-6)


def test_rms_standard_perfect_calibration_is_zero():
    # conf 0.75 with outcomes 1,1,1,0 (acc 0.75); conf 1.0 with outcomes 1,1 (acc 1.0)
    p = [0.75, 0.75, 0.75, 0.25, 1.0, 1.0]
    assert rms_calibration_error(p) == pytest.approx(0.0, abs=1e-12)


def test_rms_standard_edges_and_ties():
    # p == 0.5: confidence 0.5, outcome 0 (a tie is not a win) -> |0.5 - 0| = 0.5
    assert rms_calibration_error([0.5, 0.5]) == pytest.approx(0.5)
    # p == 0: confidence 1.0 lands in the closed last bin, outcome 0 -> 1.0
    assert rms_calibration_error([0.0]) == pytest.approx(1.0)
    # 0.6 (conf 0.6) and 0.35 (conf 0.65) share bin [0.6, 0.7): mean conf 0.625, acc 0.5
    assert rms_calibration_error([0.6, 0.35]) == pytest.approx(0.125)


def test_rms_standard_empty_raises():
    with pytest.raises(ValueError, match="empty"):
        rms_calibration_error([])


def test_rms_standard_outcomes_make_the_random_baseline_calibrated():
    # Random: p = 0.5 everywhere, decided by a fair coin. With its decisions as outcomes the
    # one bin has confidence 0.5 and accuracy = the coin's hit rate, so RMS = |0.5 - rate|.
    coin = np.random.default_rng(3).random(10_000) < 0.5
    p = np.full(coin.size, 0.5)
    assert rms_calibration_error(p, outcomes=coin) == pytest.approx(abs(0.5 - coin.mean()))
    assert rms_calibration_error(p, outcomes=coin) < 0.01
    # Without them every tie is a loss: the 0.50 the published table does not have.
    assert rms_calibration_error(p) == pytest.approx(0.5)
    # Hand case: 3 of 4 coins right -> |0.5 - 0.75|.
    assert rms_calibration_error([0.5] * 4, outcomes=[1, 1, 0, 1]) == pytest.approx(0.25)


def test_rms_standard_outcomes_agree_with_the_default_when_decisions_follow_p():
    p = np.random.default_rng(5).uniform(0.0, 1.0, 1000)
    p[:10] = 0.5  # ties, which are losses under both
    for method_outcomes in (p > 0.5, (p > 0.5).astype(int), list(p > 0.5)):
        assert rms_calibration_error(p, outcomes=method_outcomes) == rms_calibration_error(p)
    # The hand case above, with its p > 0.5 outcomes spelled out.
    hand = [0.55, 0.45, 0.95, 0.05, 0.92, 0.98]
    assert rms_calibration_error(hand, "standard", [1, 0, 1, 0, 1, 1]) == pytest.approx(
        math.sqrt(0.0275)
    )


def test_rms_outcomes_checks():
    with pytest.raises(ValueError, match="one entry per probability"):
        rms_calibration_error([0.6, 0.7], outcomes=[1])
    with pytest.raises(ValueError, match="outcomes must contain only"):
        rms_calibration_error([0.6], outcomes=[0.5])
    with pytest.raises(ValueError, match='method="standard" only'):
        rms_calibration_error([0.6] * 30, method="genies", outcomes=[1] * 30)


# ------------------------------------------------------------------------------------------
# rms_calibration_error: genies (published variant)
# ------------------------------------------------------------------------------------------


def _upstream_reference(probabilities):
    """Straight transcription of the published code (global random), state restored after."""
    saved = random.getstate()
    try:
        random.seed(42)
        labels = [random.choice([0, 1]) for _ in probabilities]
    finally:
        random.setstate(saved)
    q = np.array([p if lab == 1 else 1 - p for p, lab in zip(probabilities, labels, strict=True)])
    idx = np.digitize(q, np.linspace(0, 1, 6))
    ybar = np.mean(labels)
    scores = [(ybar - q[idx == k].mean()) ** 2 for k in range(1, 6) if np.sum(idx == k) >= 20]
    return float(np.sqrt(np.mean(scores))) if scores else float("nan")


def test_l42_literal_is_the_seeded_sequence():
    rng = random.Random(42)
    assert [rng.choice([0, 1]) for _ in range(60)] == L42
    assert sum(L42) == 25


def test_rms_genies_hand_case():
    # Choose p_i from the known l_i so that q_i (= p_i if l_i == 1 else 1 - p_i) is the target:
    #   25 pairs with q = 0.9 -> bin 5 [0.8, 1.0): 25 members, kept
    #   22 pairs with q = 0.3 -> bin 2 [0.2, 0.4): 22 members, kept
    #   12 pairs with q = 0.5 -> bin 3: 12 members < 20, dropped
    #    1 pair  with q = 1.0 -> index 6, ignored
    # ybar = mean of ALL 60 l_i = 25/60 = 5/12 = 0.41667
    # s_5 = (5/12 - 0.9)^2 = 0.233611..., s_2 = (5/12 - 0.3)^2 = 0.013611...
    # RMS = sqrt((s_5 + s_2) / 2) = sqrt(0.123611...) = 0.351584...
    targets = [0.9] * 25 + [0.3] * 22 + [0.5] * 12 + [1.0]
    p = [q if lab == 1 else 1 - q for q, lab in zip(targets, L42, strict=True)]
    expected = math.sqrt(((5 / 12 - 0.9) ** 2 + (5 / 12 - 0.3) ** 2) / 2)
    assert expected == pytest.approx(0.351584, abs=1e-6)
    assert rms_calibration_error(p, method="genies") == pytest.approx(expected)
    assert rms_calibration_error(p, method="genies") == pytest.approx(_upstream_reference(p))


def test_rms_genies_small_bins_give_nan():
    # 20 pairs at p = 0.3: the first 20 l_i have 5 ones -> 5 with q = 0.3 (bin 2) and 15 with
    # q = 0.7 (bin 4); no bin reaches 20 members.
    assert math.isnan(rms_calibration_error([0.3] * 20, method="genies"))
    assert math.isnan(rms_calibration_error([], method="genies"))
    # 20 pairs at p = 0.5 all have q = 0.5 -> one bin of 20, kept: |ybar - 0.5| with
    # ybar = 5/20 = 0.25 -> 0.25
    assert rms_calibration_error([0.5] * 20, method="genies") == pytest.approx(0.25)


def test_rms_genies_ignores_q_equal_one():
    # p_i chosen so that every q_i is exactly 1.0: all 20 fall outside bins 1..5 -> NaN
    # (were 1.0 counted in the last bin, that bin would have 20 members and be kept).
    p = [1.0 if lab == 1 else 0.0 for lab in L42[:20]]
    assert math.isnan(rms_calibration_error(p, method="genies"))
    # Adding those pairs to 20 with q = 0.5 changes only ybar: first 40 l_i have 15 ones.
    p40 = [0.5] * 20 + [1.0 if lab == 1 else 0.0 for lab in L42[20:40]]
    assert sum(L42[:40]) == 15
    assert rms_calibration_error(p40, method="genies") == pytest.approx(abs(15 / 40 - 0.5))


def test_rms_genies_matches_upstream_transcription_and_keeps_global_state():
    p = np.random.default_rng(7).random(500).tolist()
    random.seed(2024)
    before = random.getstate()
    first = rms_calibration_error(p, method="genies")
    assert random.getstate() == before
    assert rms_calibration_error(np.array(p), method="genies") == first
    assert first == pytest.approx(_upstream_reference(p))


# ------------------------------------------------------------------------------------------
# rms_calibration_error: argument checks, brier_score
# ------------------------------------------------------------------------------------------


def test_rms_unknown_method():
    with pytest.raises(ValueError, match="standard.*genies"):
        rms_calibration_error([0.7], method="ece")


@pytest.mark.parametrize("method", ["standard", "genies"])
@pytest.mark.parametrize("bad", [[1.2], [-0.1], [float("nan")]])
def test_rms_rejects_invalid_probabilities(method, bad):
    with pytest.raises(ValueError, match="probabilities"):
        rms_calibration_error(bad, method=method)


def test_brier_score():
    # ((1-1)^2 + (1-0.5)^2 + (1-0)^2) / 3 = 1.25 / 3
    assert brier_score([1.0, 0.5, 0.0]) == pytest.approx(1.25 / 3)
    with pytest.raises(ValueError):
        brier_score([])
