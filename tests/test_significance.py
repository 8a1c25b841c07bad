"""The paired prompt bootstrap on hand-built predictions whose answer is known."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from genies.data.predictions import predictions_table
from genies.data.shifts import Shift, shifts_table
from genies.results.cells import PredictionGroups, cell_options, compute_cells
from genies.results.significance import (
    bootstrap_weights,
    differential_elicitation_draws,
    prompt_bootstrap,
)
from genies.seeds import derive_seed

N_EXAMPLES = 200
SHIFT = Shift("src", "tgt", "tgt", label="extreme")
REGISTRY = shifts_table([SHIFT], {"genies": [SHIFT], "extreme": [SHIFT]})


def group(intervention, train, eval_dataset, correct, model="m") -> pa.Table:
    """Two pairs per example; probabilities that agree with the flags."""
    correct = np.asarray(correct, bool)
    n = correct.size
    pairs = {
        "example_id": np.array([f"{eval_dataset}/test/{i // 2}" for i in range(n)], object),
        "pair_index": (np.arange(n) % 2).astype(np.int16),
        "preferred_response": np.zeros(n, np.int8),
        "dispreferred_response": (np.arange(n) % 2 + 1).astype(np.int8),
    }
    return predictions_table(
        model, intervention, train, eval_dataset, pairs, np.where(correct, 0.7, 0.3), correct
    )


def flags(rate, seed, n=2 * N_EXAMPLES) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < rate


def run(tables, registry=REGISTRY, capability=("lora",), seed=0, n_resamples=1000):
    groups = PredictionGroups(pa.concat_tables(tables))
    return prompt_bootstrap(
        groups,
        registry,
        capability_interventions=capability,
        seed=seed,
        n_resamples=n_resamples,
    )


def rows(table: pa.Table, *keys) -> dict:
    return {tuple(r[k] for k in keys): r for r in table.to_pylist()}


BASE = [
    group("zero_shot", "none", "tgt", flags(0.5, 1)),
    group("lora", "tgt", "tgt", flags(0.9, 2)),
]


def test_identical_interventions_tie_in_every_draw():
    same = flags(0.6, 3)
    intervals, comparisons = run(
        [*BASE, group("a", "src", "tgt", same), group("b", "src", "tgt", same)]
    )
    pair = rows(comparisons, "intervention", "other")[("a", "b")]
    assert pair["shifts"] == 1 and pair["difference"] == 0.0
    assert (pair["difference_low"], pair["difference_high"]) == (0.0, 0.0)
    # A tie counts one half: identical interventions are ahead in exactly half the draws.
    assert pair["ahead_share"] == 0.5 and pair["tied_share"] == 1.0
    by = rows(intervals, "intervention")
    low, high = (
        by[("a",)]["avg_differential_elicitation_low"],
        by[("a",)]["avg_differential_elicitation_high"],
    )
    assert (low, high) == (
        by[("b",)]["avg_differential_elicitation_low"],
        by[("b",)]["avg_differential_elicitation_high"],
    )
    assert low < 0.1 < high  # DE = (0.6 - 0.5) / 0.9 ~ 0.11, a real interval around it


def test_a_shifted_intervention_comes_out_ahead():
    worse = flags(0.6, 3)
    better = worse.copy()
    better[np.flatnonzero(~worse)[:60]] = True  # 60 of the 400 pairs fixed: +0.15 accuracy
    intervals, comparisons = run(
        [*BASE, group("a", "src", "tgt", worse), group("b", "src", "tgt", better)]
    )
    by_pair = rows(comparisons, "intervention", "other")
    ahead, behind = by_pair[("b", "a")], by_pair[("a", "b")]
    capability = BASE[1].column("correct").to_numpy().mean()
    assert ahead["difference"] == pytest.approx(0.15 / capability)
    assert 0 < ahead["difference_low"] < ahead["difference"] < ahead["difference_high"]
    assert ahead["ahead_share"] > 0.99 and ahead["tied_share"] == 0.0
    # The other order: opposite difference and interval, shares summing to 1.
    assert behind["difference"] == -ahead["difference"]
    assert (behind["difference_low"], behind["difference_high"]) == (
        -ahead["difference_high"],
        -ahead["difference_low"],
    )
    assert behind["ahead_share"] == pytest.approx(1 - ahead["ahead_share"])
    # Points: the cells' DE averages.
    cells = compute_cells(pa.concat_tables([*BASE, group("b", "src", "tgt", better)]), [SHIFT])
    de = {r["intervention"]: r["differential_elicitation"] for r in cells.to_pylist()}
    assert ahead["avg_differential_elicitation"] == pytest.approx(de["b"])
    assert intervals.num_rows == 4  # a, b, lora, zero_shot


def test_baseline_and_capability_are_drawn_with_the_generalisation_accuracy():
    # Zero-shot's DE is 0 in every draw, and an intervention that is right exactly where the
    # capability is has DE = acc / capability = 1 in every draw over the baseline's zeros:
    # only draws that share the prompts across the three give intervals of width 0.
    capability = flags(0.8, 5)
    tables = [
        group("zero_shot", "none", "tgt", np.zeros(2 * N_EXAMPLES, bool)),
        group("lora", "tgt", "tgt", capability),
        group("a", "src", "tgt", capability),
    ]
    by = rows(run(tables)[0], "intervention")
    for name, value in (("zero_shot", 0.0), ("a", 1.0)):
        row = by[(name,)]
        assert row["avg_differential_elicitation_low"] == pytest.approx(value, abs=1e-12)
        assert row["avg_differential_elicitation_high"] == pytest.approx(value, abs=1e-12)


def test_draws_are_the_hand_computed_ratio_with_the_best_capability_per_draw():
    shift = Shift("src", "tgt", "ref")
    n = 40  # examples; two pairs each
    tables = [
        group("zero_shot", "none", "tgt", flags(0.4, 6, 2 * n)),
        group("a", "src", "tgt", flags(0.6, 7, 2 * n)),
        # Equally accurate overall, right on different prompts.
        group("lora", "ref", "ref", flags(0.7, 8, 2 * n)),
        group("mms", "ref", "ref", np.roll(flags(0.7, 8, 2 * n), 6)),
    ]
    groups = PredictionGroups(pa.concat_tables(tables))
    options = cell_options(groups, ("lora", "mms"))
    point, draws, resampled = differential_elicitation_draws(
        groups, "m", ["a"], [shift], options, 300, 11
    )
    assert resampled.tolist() == [[True]]

    def drawn_accuracy(table, dataset):
        weights = bootstrap_weights(n, 300, derive_seed(11, "prompt bootstrap", dataset))
        per_example = table.column("correct").to_numpy().reshape(n, 2).sum(axis=1)
        return weights @ per_example / (weights.sum(axis=1) * 2)

    target = [drawn_accuracy(t, "tgt") for t in tables[:2]]
    capability = np.maximum(*(drawn_accuracy(t, "ref") for t in tables[2:]))
    assert draws[:, 0, 0] == pytest.approx((target[1] - target[0]) / capability)
    accuracies = [t.column("correct").to_numpy().mean() for t in tables]
    expected = (accuracies[1] - accuracies[0]) / max(accuracies[2:])
    assert point[0, 0] == pytest.approx(expected)
    # The capability changes hands between draws: the maximum is taken per draw.
    lora, mms = (drawn_accuracy(t, "ref") for t in tables[2:])
    assert (lora > mms).any() and (mms > lora).any()


def test_seeded_and_reproducible():
    tables = [*BASE, group("a", "src", "tgt", flags(0.6, 3))]
    first, again, other = run(tables), run(tables), run(tables, seed=1)
    assert first[0].equals(again[0]) and first[1].equals(again[1])
    assert not first[0].equals(other[0])


def test_each_average_over_its_own_set():
    shifts = [SHIFT, Shift("src", "tgt2", "tgt2")]
    registry = shifts_table(shifts, {"genies": shifts, "probing": shifts[1:]})
    tables = [
        *BASE,
        group("a", "src", "tgt", flags(0.6, 3)),
        group("zero_shot", "none", "tgt2", flags(0.5, 12)),
        group("lora", "tgt2", "tgt2", flags(0.9, 13)),
        group("a", "src", "tgt2", flags(0.7, 14)),
    ]
    a = rows(run(tables, registry)[0], "intervention")[("a",)]
    # No extreme shift in this registry; probing is tgt2 alone, genies both.
    assert a["extreme_avg_differential_elicitation_low"] is None
    assert a["probing_avg_differential_elicitation_low"] is not None
    assert a["avg_differential_elicitation_low"] != a["probing_avg_differential_elicitation_low"]
    # A shift whose cell has no DE (no capability predictions) leaves the averages alone.
    missing_capability = [t for t in tables if t.column("eval")[0].as_py() != "tgt2"]
    missing_capability.append(tables[-1])
    alone = rows(run(missing_capability, registry)[0], "intervention")[("a",)]
    only_first = rows(run(tables[:3])[0], "intervention")[("a",)]
    assert (
        alone["avg_differential_elicitation_low"] == only_first["avg_differential_elicitation_low"]
    )
    assert alone["probing_avg_differential_elicitation_low"] is None


def test_bootstrap_weights():
    weights = bootstrap_weights(7, 50, 3)
    assert weights.shape == (50, 7) and (weights.sum(axis=1) == 7).all()
    assert (weights == bootstrap_weights(7, 50, 3)).all()
    with pytest.raises(ValueError, match="n_resamples"):
        run(BASE, n_resamples=0)


def test_stored_results_a_given_capability_is_held_fixed_and_summaries_have_no_interval():
    """Published runs (genies.results.published): capabilities given as numbers, and accuracies
    stored without their pairs (summaries), which cannot be resampled."""
    tables = [
        *BASE,
        group("a", "src", "tgt", flags(0.6, 3)),
        group("b", "src", "tgt", flags(0.7, 4)),
    ]
    capabilities = pa.table(
        {
            "model": ["m"],
            "target": ["tgt"],
            "capability": [0.95],
            "capability_intervention": ["lora"],
        }
    )
    groups = PredictionGroups(pa.concat_tables(tables), capabilities=capabilities)
    options = cell_options(groups, ("lora",))
    point, draws, _ = differential_elicitation_draws(groups, "m", ["a"], [SHIFT], options, 200, 0)
    target = [t.column("correct").to_numpy() for t in (tables[0], tables[2])]
    assert point[0, 0] == pytest.approx((target[1].mean() - target[0].mean()) / 0.95)
    # Only the target's prompts vary: the draws are the accuracy differences over 0.95.
    weights = bootstrap_weights(N_EXAMPLES, 200, derive_seed(0, "prompt bootstrap", "tgt"))
    drawn = [weights @ t.reshape(-1, 2).sum(axis=1) / (2 * weights.sum(axis=1)) for t in target]
    assert draws[:, 0, 0] == pytest.approx((drawn[1] - drawn[0]) / 0.95)

    summaries = pa.table(
        {
            "model": ["m"],
            "intervention": ["c"],
            "train": ["src"],
            "eval": ["tgt"],
            "accuracy": [0.8],
        }
    )
    groups = PredictionGroups(pa.concat_tables(tables), summaries=summaries)
    intervals, comparisons = prompt_bootstrap(
        groups, REGISTRY, capability_interventions=("lora",), n_resamples=100
    )
    by = rows(intervals, "intervention")
    assert by[("c",)]["avg_differential_elicitation_low"] is None
    assert by[("a",)]["avg_differential_elicitation_low"] is not None
    pair = rows(comparisons, "intervention", "other")[("c", "a")]
    capability = tables[1].column("correct").to_numpy().mean()
    assert pair["difference"] == pytest.approx((0.8 - target[1].mean()) / capability)
    assert pair["difference_low"] is None and pair["ahead_share"] is None
