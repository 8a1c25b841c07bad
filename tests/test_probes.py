"""Tests of genies.methods.probes / ccs / calibration on synthetic activations with planted
directions."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from genies.data.predictions import PREDICTION_SCHEMA, expand_pairs
from genies.data.stimuli import STIMULI
from genies.errors import ConfigError
from genies.forward.activations import ActivationWriter
from genies.forward.zero_shot import FORWARD_SCHEMA
from genies.io import read_provenance
from genies.methods import ccs
from genies.methods.calibration import (
    PRECISIONS,
    calibrated_probability,
    fit_logistic,
    fit_pair_calibration,
    symmetric_sigmoid,
)
from genies.methods.probes import (
    METHODS,
    fit,
    load_probe_input,
    load_state,
    method_params,
    predict,
    probe_input,
    run_fit,
    run_predict,
    save_state,
    training_pairs,
)

L, H, DH, D = 6, 4, 16, 32
HEADS = [(1, 2), (4, 0)]  # informative (layer, head)
LAYERS = [2, 5]  # informative layers (5 = the last one, read by CCS)
FAST = {"ccs": {"epochs": 300, "restarts": 4}}
TORCH_THREADS = 1  # pinned by tests/conftest.py


def examples_table(dataset, preferred, k):
    n = len(preferred)
    return pa.table(
        {
            "example_id": [f"{dataset}/train/{i:05d}" for i in range(n)],
            "preferred": pa.array(preferred, pa.int8()),
            "dispreferred": pa.array(
                [[j for j in range(k) if j != p] for p in preferred], pa.list_(pa.int8())
            ),
            "n_responses": pa.array([k] * n, pa.int8()),
        }
    )


def synthetic(dataset, n, k, seed, strength=2.0, content_mean=0.0):
    """Activations of every stimulus in the forward job's layout: noise, plus +-strength along
    a fixed direction in the informative units (+ for the preferred response). Yes and No
    carry it with opposite signs on top of shared per-text content (mean `content_mean`), as
    CCS assumes."""
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(1234)  # the "model": same directions for every dataset
    v_heads = fixed.normal(size=(L, H, DH))
    v_heads /= np.linalg.norm(v_heads, axis=-1, keepdims=True)
    v_resid = fixed.normal(size=(L, D))
    v_resid /= np.linalg.norm(v_resid, axis=-1, keepdims=True)
    preferred = rng.integers(k, size=n)
    sign = np.where(np.arange(k)[None, :] == preferred[:, None], 1.0, -1.0)  # [n, k]
    content = {
        "heads": rng.normal(content_mean, size=(n, k, L, H, DH)),
        "resid": rng.normal(content_mean, size=(n, k, L, D)),
    }

    def reading(flip, offset):
        heads = content["heads"] + 0.5 * rng.normal(size=content["heads"].shape) + offset
        resid = content["resid"] + 0.5 * rng.normal(size=content["resid"].shape) + offset
        for layer, head in HEADS:
            heads[:, :, layer, head] += flip * strength * sign[..., None] * v_heads[layer, head]
        for layer in LAYERS:
            resid[:, :, layer] += flip * strength * sign[..., None] * v_resid[layer]
        return {"heads": heads.astype(np.float16), "resid": resid.astype(np.float16)}

    acts = {stim: reading(1.0, 0.0) for stim in ("plain", "lat2")}
    yes, no = reading(1.0, 3.0), reading(-1.0, -3.0)
    acts["yesno"] = {t: np.stack([yes[t], no[t]], axis=2) for t in ("heads", "resid")}
    text_dims = {"heads": (L, H, DH), "resid": (L, D)}
    for stim in acts:  # flatten to rows: example, response (, answer)
        acts[stim] = {t: a.reshape(-1, *text_dims[t]) for t, a in acts[stim].items()}
    return examples_table(dataset, preferred.tolist(), k), acts


def inputs(method, dataset, examples, acts):
    spec = METHODS[method]
    array = acts[spec.stimulus][spec.tensor]
    return probe_input(dataset, examples, spec.tensor, spec.stimulus, array)


def flipped(examples):
    """k = 2 data with the roles of the two responses swapped."""
    assert examples.column("n_responses")[0].as_py() == 2
    pref = [1 - p for p in examples.column("preferred").to_pylist()]
    return examples_table("target", pref, 2).set_column(
        0, "example_id", examples.column("example_id")
    )


@pytest.fixture(scope="module")
def data():
    return {"source": synthetic("source", 80, 3, seed=1), "target": synthetic("target", 60, 2, 2)}


@pytest.fixture(scope="module")
def fitted(data):
    states = {}
    for method in METHODS:
        src = inputs(method, "source", *data["source"])
        params = {**FAST.get(method, {}), **({"n_units": 2} if method != "ccs" else {})}
        states[method] = fit(method, src, params, seed=0)
    return states


@pytest.mark.parametrize("method", sorted(METHODS))
def test_recovers_planted_direction(method, data, fitted):
    state = fitted[method]
    prob, correct = predict(state, inputs(method, "target", *data["target"]))
    assert correct.mean() > 0.95
    assert np.array_equal(correct, prob > 0.5)
    assert state.info["calibration_weight"] > 0
    assert state.info["source_val_accuracy"] > 0.95


@pytest.mark.parametrize("method", ["mms", "cra", "lat1", "lat2"])
def test_selection_picks_informative_units(method, fitted):
    want = [list(u) for u in HEADS] if METHODS[method].tensor == "heads" else LAYERS
    assert sorted(fitted[method].info["selected"]) == sorted(want)
    acc = fitted[method].tensors["unit_val_accuracy"]
    assert np.sort(acc)[-2:].min() > 0.9 and np.sort(acc)[:-2].max() < 0.8


@pytest.mark.parametrize("method", ["mms", "lat1", "cra"])
def test_directions_are_hand_computed_mean_differences(method):
    """Each selected unit's direction is the mean feature of the preferred texts minus that of
    the dispreferred texts of the source TRAIN pairs. The content has a large non-zero mean
    (and CRA's Yes minus No a constant offset), so a direction that forgot to subtract the
    dispreferred mean, or averaged other texts, would differ."""
    n, k, seed = 40, 3, 3
    examples, acts = synthetic("source", n, k, seed=11, content_mean=5.0)
    state = fit(method, inputs(method, "source", examples, acts), {"n_units": 2}, seed=seed)
    spec = METHODS[method]
    stored = acts[spec.stimulus][spec.tensor].astype(np.float64)  # forward layout, rows
    if spec.stimulus == "yesno":  # rows: example, response, answer (Yes then No)
        stored = stored.reshape(n, k, 2, *stored.shape[1:])
        feature = stored[:, :, 0] - stored[:, :, 1]
    else:
        feature = stored.reshape(n, k, *stored.shape[1:])
    pairs = training_pairs(examples, "source", seed, method_params(method)["train_fraction"])
    train = pairs.train
    assert 0 < len(train) < n
    preferred = feature[pairs.row[train], pairs.preferred[train]]  # [pairs, L, (H,) dim]
    dispreferred = feature[pairs.row[train], pairs.dispreferred[train]]
    assert len(state.info["selected"]) == len(state.tensors["directions"]) == 2
    for unit, direction in zip(state.info["selected"], state.tensors["directions"], strict=True):
        at = (slice(None), *unit) if spec.tensor == "heads" else (slice(None), unit)
        expected = preferred[at].mean(0) - dispreferred[at].mean(0)
        np.testing.assert_allclose(direction, expected, rtol=1e-5, atol=1e-4)
        assert np.linalg.norm(preferred[at].mean(0) - expected) > 5.0  # the check can fail


@pytest.mark.parametrize("method", sorted(METHODS))
def test_flipped_order_gives_complementary_probabilities(method, data, fitted):
    examples, acts = data["target"]
    prob, correct = predict(fitted[method], inputs(method, "target", examples, acts))
    prob_f, correct_f = predict(fitted[method], inputs(method, "target", flipped(examples), acts))
    assert np.array_equal(prob_f, 1.0 - prob)
    assert np.array_equal(prob + prob_f, np.ones_like(prob))
    assert not (correct & correct_f).any()


def test_ccs_orientation_comes_from_source_labels(data, fitted):
    """Same texts, source labels swapped: the unsupervised probe is the same up to rounding,
    its orientation flips, so target predictions flip; target labels are never used."""
    examples, acts = synthetic("source", 80, 2, seed=5)
    state = fit("ccs", inputs("ccs", "source", examples, acts), FAST["ccs"], seed=0)
    state_f = fit("ccs", inputs("ccs", "source", flipped(examples), acts), FAST["ccs"], seed=0)
    assert state.tensors["orientation"][0] == -state_f.tensors["orientation"][0]
    np.testing.assert_allclose(state.tensors["weight"], state_f.tensors["weight"], atol=1e-6)
    target = inputs("ccs", "target", *data["target"])
    prob, correct = predict(state, target)
    prob_f, correct_f = predict(state_f, target)
    assert correct.mean() > 0.95 and correct_f.mean() < 0.05
    np.testing.assert_allclose(prob_f, 1 - prob, atol=1e-6)


def test_ccs_fit_needs_no_labels():
    rng = np.random.default_rng(0)
    truth = rng.integers(2, size=200) * 2 - 1.0
    v = np.eye(8)[3]
    content = rng.normal(size=(200, 8))
    x_pos = content + 2 * truth[:, None] * v
    x_neg = content - 2 * truth[:, None] * v
    x_pos, x_neg = x_pos - x_pos.mean(0), x_neg - x_neg.mean(0)
    probe = ccs.fit_ccs(x_pos, x_neg, restarts=3, epochs=500, seed=1)
    cos = probe.weight @ v / np.linalg.norm(probe.weight)
    assert abs(cos) > 0.9
    c = ccs.credence(probe, x_pos, x_neg)
    agreement = np.mean((c > 0.5) == (truth > 0))
    assert max(agreement, 1 - agreement) > 0.95
    final = ccs.ccs_loss(
        torch.sigmoid(torch.tensor(x_pos @ probe.weight + probe.bias))[:, None],
        torch.sigmoid(torch.tensor(x_neg @ probe.weight + probe.bias))[:, None],
    )
    assert np.isclose(final.item(), probe.losses.min(), rtol=1e-9)
    assert final.item() < 0.2  # a constant p = 0.5 probe scores 0.25


@pytest.mark.parametrize("method", ["mms", "ccs"])
def test_deterministic_and_round_trip(method, data, fitted, tmp_path):
    src = inputs(method, "source", *data["source"])
    params = FAST.get(method, {"n_units": 2})
    again = fit(method, src, params, seed=0)
    state = fitted[method]
    assert again.info == state.info and again.params == state.params
    assert sorted(again.tensors) == sorted(state.tensors)
    for name, value in state.tensors.items():
        assert np.array_equal(again.tensors[name], value), name
    target = inputs(method, "target", *data["target"])
    save_state(state, tmp_path / "s.safetensors", tmp_path / "s.json", {"job": "fit"})
    loaded = load_state(tmp_path / "s.safetensors", tmp_path / "s.json")
    for a, b in zip(predict(state, target), predict(loaded, target), strict=True):
        assert np.array_equal(a, b)
    assert json.loads((tmp_path / "s.json").read_text())["provenance"] == {"job": "fit"}
    seeded = "unit_val_accuracy" if method == "mms" else "weight"
    other = fit(method, src, params, seed=1)
    assert not np.array_equal(other.tensors[seeded], state.tensors[seeded])


def write_forward(tmp_path, stim, examples, acts, rows=None, split="test"):
    """The forward job's files for one stimulus, written with its own writer."""
    arrays = acts[stim]
    spec = {f"{split}/{stim}/{t}": (a.shape, np.float16) for t, a in arrays.items()}
    writer = ActivationWriter(tmp_path / f"{stim}.safetensors", spec, {"stimulus": stim})
    for t, a in arrays.items():
        writer.write(f"{split}/{stim}/{t}", slice(None), a)
    writer.close()
    k, answers = examples.column("n_responses")[0].as_py(), 2 if stim == "yesno" else 1
    n = len(arrays["resid"]) // (k * answers)
    ids = examples.column("example_id").to_pylist()[:n]
    rows = rows or [(e, j, a) for e in ids for j in range(k) for a in range(answers)]
    table = pa.table(
        {
            "split": [split] * len(rows),
            "stimulus": [stim] * len(rows),
            "example_id": [r[0] for r in rows],
            "response_index": pa.array([r[1] for r in rows], pa.int8()),
            "answer": pa.array([r[2] for r in rows], pa.int8()),
            "logprob_sum": np.zeros(len(rows)),
            "n_tokens": pa.array(np.ones(len(rows), np.int32)),
            "prompt_tokens_cut": pa.array(np.zeros(len(rows), np.int32)),
            "skipped": pa.array(np.zeros(len(rows), bool)),
        },
        schema=FORWARD_SCHEMA,
    )
    pq.write_table(table, tmp_path / f"{stim}.parquet")
    return tmp_path / f"{stim}.safetensors", tmp_path / f"{stim}.parquet"


def test_forward_files_are_read_as_written(data, fitted, tmp_path):
    examples, acts = data["target"]
    pq.write_table(examples, tmp_path / "data.parquet")
    for method in ("cra", "ccs", "lat2"):
        act_file, rows_file = write_forward(tmp_path, METHODS[method].stimulus, examples, acts)
        loaded = load_probe_input(
            method, "target", "test", tmp_path / "data.parquet", act_file, rows_file
        )
        direct = inputs(method, "target", examples, acts)
        got, want = predict(fitted[method], loaded), predict(fitted[method], direct)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    ids = examples.column("example_id").to_pylist()
    swapped = [(e, j, 1 - a) for e in ids for j in range(2) for a in range(2)]
    act_file, rows_file = write_forward(tmp_path, "yesno", examples, acts, swapped)
    with pytest.raises(ValueError, match="rerun the forward job"):
        load_probe_input("cra", "target", "test", tmp_path / "data.parquet", act_file, rows_file)
    with pytest.raises(ValueError, match="the method reads"):
        predict(fitted["cra"], inputs("mms", "target", examples, acts))


def test_model_mismatch_and_params_are_checked(data, fitted):
    examples, acts = data["target"]
    small = {"plain": {"heads": np.ascontiguousarray(acts["plain"]["heads"][..., :8])}}
    with pytest.raises(ValueError, match="another model"):
        predict(fitted["mms"], inputs("mms", "target", examples, small))
    with pytest.raises(ValueError, match="examples x 2 responses"):
        inputs("mms", "target", examples, {"plain": {"heads": acts["plain"]["heads"][:-1]}})
    with pytest.raises(ConfigError, match="interventions/mms: unknown parameter 'n_heads'"):
        method_params("mms", {"n_heads": 3})
    with pytest.raises(ValueError, match="unknown probe method"):
        method_params("iti", {})
    assert method_params("lat1", {"n_units": 4})["n_units"] == 4
    assert {m.stimulus for m in METHODS.values()} <= set(STIMULI)


# ----------------------------------------------------------------------------- calibration


@pytest.mark.parametrize(
    ("m", "d", "intercept"), [(60, 8, True), (30, 50, True), (40, 5, False), (20, 30, False)]
)
def test_fit_logistic_matches_sklearn(m, d, intercept):
    rng = np.random.default_rng(m + d)
    x = rng.normal(size=(3, m, d))
    y = (rng.random(m) < 0.5).astype(float)
    x[:, y == 1, 0] += 1.0
    got = fit_logistic(x, y, C=0.7, fit_intercept=intercept)
    assert got.converged.all()
    for u in range(3):
        ref = LogisticRegression(C=0.7, fit_intercept=intercept, tol=1e-12, max_iter=10**5)
        ref.fit(x[u], y)
        np.testing.assert_allclose(got.coef[u], ref.coef_[0], atol=1e-5)
        if intercept:
            assert abs(got.intercept[u] - ref.intercept_[0]) < 1e-5


def test_calibration_is_position_free():
    x = np.linspace(-40, 40, 2001)
    p = symmetric_sigmoid(x)
    assert np.array_equal(symmetric_sigmoid(-x), 1.0 - p)
    assert np.array_equal(p + symmetric_sigmoid(-x), np.ones_like(p))
    assert p[1000] == 0.5 and np.all(np.diff(p) >= 0)
    scores = np.array([0.3, 0.2, 0.5, -0.1, 0.4])
    w = fit_pair_calibration(scores)
    assert w > 0 and fit_pair_calibration(-scores) == -w
    assert np.isfinite(fit_pair_calibration(np.array([0.9, 0.8, 0.7])))  # separable: finite
    # the no-intercept MLE with a weak penalty matches sklearn on the doubled data
    ref = LogisticRegression(C=1 / 1e-3, fit_intercept=False, tol=1e-12, max_iter=10**5)
    ref.fit(np.r_[scores, -scores][:, None], np.r_[np.ones(5), np.zeros(5)])
    assert abs(fit_pair_calibration(scores, l2=1e-3) - ref.coef_[0, 0]) < 1e-5
    assert np.array_equal(calibrated_probability(-scores, w), 1 - calibrated_probability(scores, w))


def test_expand_pairs_order_is_used(data, fitted):
    examples, acts = data["target"]
    prob, _ = predict(fitted["mms"], inputs("mms", "target", examples, acts))
    assert len(prob) == len(expand_pairs(examples)["example_id"]) == 60


def test_ccs_source_centring(data):
    """centre: source (the default) uses only the source means, so each evaluation example is
    scored on its own; on shifted target features it differs from centre: eval, which
    re-centres on the (unlabelled) target, so that a score depends on the other examples."""
    src = inputs("ccs", "source", *data["source"])
    state = fit("ccs", src, FAST["ccs"], seed=0)
    assert state.params["centre"] == "source"
    examples, acts = data["target"]
    prob, correct = predict(state, inputs("ccs", "target", examples, acts))
    assert correct.mean() > 0.95
    rows = 20 * 2 * 2  # the first 20 examples: k = 2 responses x (Yes, No)
    alone = {"yesno": {"resid": acts["yesno"]["resid"][:rows]}}
    first = inputs("ccs", "target", examples.slice(0, 20), alone)
    assert np.array_equal(predict(state, first)[0], prob[:20])  # one pair per example
    prob_f, _ = predict(state, inputs("ccs", "target", flipped(examples), acts))
    assert np.array_equal(prob_f, 1 - prob)
    shifted = {"yesno": {"resid": acts["yesno"]["resid"] + np.float16(4)}}
    by_source = predict(state, inputs("ccs", "target", examples, shifted))[0]
    state.params["centre"] = "eval"
    by_eval = predict(state, inputs("ccs", "target", examples, shifted))[0]
    by_eval_all = predict(state, inputs("ccs", "target", examples, acts))[0]
    assert not np.allclose(by_source, prob, atol=1e-3)
    np.testing.assert_allclose(by_eval, by_eval_all, atol=0.02)
    assert np.abs(predict(state, first)[0] - by_eval_all[:20]).max() > 1e-3


SPLIT_OF = {"source": "train", "target": "test"}


def test_fit_and_predict_jobs(data, fitted, tmp_path):
    """The job functions read the forward job's files and write state + prediction Parquet."""
    for name, (examples, acts) in data.items():
        pq.write_table(examples, tmp_path / f"{name}.parquet")
        (tmp_path / name).mkdir()
        write_forward(tmp_path / name, "plain", examples, acts, split=SPLIT_OF[name])
    state_paths = (tmp_path / "mms.safetensors", tmp_path / "mms.json")
    files = {n: (tmp_path / n / "plain.safetensors", tmp_path / n / "plain.parquet") for n in data}
    run_fit("mms", "source", tmp_path / "source.parquet", *files["source"], state_paths,
            params={"n_units": 2}, seed=0, limit=None)  # fmt: skip
    assert json.loads(state_paths[1].read_text())["provenance"]["job"] == "fit"
    out = tmp_path / "pred.parquet"
    run_predict("m", "mms", "source", "target", tmp_path / "target.parquet", *files["target"],
                state_paths, out, limit=None)  # fmt: skip
    table = pq.read_table(out)
    assert table.schema.remove_metadata() == PREDICTION_SCHEMA
    prob, correct = predict(fitted["mms"], inputs("mms", "target", *data["target"]))
    assert np.array_equal(table.column("prob_preferred").to_numpy(), prob)
    assert np.array_equal(table.column("correct").to_numpy(), correct)
    assert read_provenance(out)["params"] == fitted["mms"].params


# ----------------------------------------------------------------------------- mixed precision

LOSS_TIE = 1e-6  # val log-losses this close are a tie (mixed vs float64 differ by ~1e-9)


def paper_sized_features(units, dim, seed, example, sign, strength=None):
    """[units, texts, dim] float16-valued features with a model's rough structure: an offset
    with two massive dimensions, per-prompt content shared by the texts of an example (low
    rank), noise, and a preference direction (strength per unit; default: random, weak).
    Text t belongs to example `example[t]` and carries the direction times `sign[t]`."""
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(dim)  # the "model": the same for every dataset
    offset = fixed.normal(size=(units, 1, dim)) * 3
    offset[..., :2] *= 50
    basis = fixed.normal(size=(units, 16, dim))
    direction = fixed.normal(size=(units, 1, dim))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    strength = fixed.uniform(0.5, 3, size=units) if strength is None else np.asarray(strength)
    prompt = rng.normal(size=(units, example.max() + 1, 16)) * np.geomspace(5, 0.2, 16) / 4
    content = (prompt @ basis)[:, example]
    x = offset + content + rng.normal(size=content.shape)
    x += sign[None, :, None] * strength[:, None, None] * direction
    return x.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize(("units", "dim"), [(24, 128), (1, 6656)])  # 30B heads, a 30B layer
def test_mixed_precision_matches_float64_at_paper_shapes(units, dim):
    """420 train / 180 val pairs, as a 600-example train split gives: the mixed-precision
    probes (float32 Newton steps) predict the val texts as the float64 ones do."""
    y = np.r_[np.ones(600), np.zeros(600)]  # example i: preferred text i, dispreferred 600 + i
    x = paper_sized_features(units, dim, dim, np.r_[0:600, 0:600], 2 * y - 1)
    train, val = np.r_[0:420, 600:1020], np.r_[420:600, 1020:1200]
    out = {}
    for precision in ("float64", "mixed"):
        got = fit_logistic(x[:, train], y[train], precision=precision)
        assert got.converged.all()
        z = got.decision(x[:, val])
        loss = (np.logaddexp(0.0, z) - y[val] * z).mean(1)
        out[precision] = symmetric_sigmoid(z), ((z > 0) == y[val]).mean(1), loss, got.n_iter
    (p64, acc64, loss64, it64), (p32, acc32, loss32, it32) = out["float64"], out["mixed"]
    assert 0.6 < acc64.mean() < 0.99  # neither trivial nor hopeless
    assert np.abs(p32 - p64).max() < 1e-4
    assert np.array_equal(acc32, acc64)
    assert np.abs(loss32 - loss64).max() < LOSS_TIE
    assert it32 <= it64 + 2


def same_units(selected, reference, acc, loss, tol=LOSS_TIE) -> bool:
    """Two selections are the same if they differ only by units tied with the last unit the
    reference kept: the same val accuracy (exactly: it counts texts) and a val log-loss
    within `tol` of it. `acc`, `loss`: the reference's keys, per unit. Only such units can
    trade places between precisions: the ranking is by accuracy, then log-loss, then index."""
    cut = reference[-1]
    tied = {u for u in range(len(acc)) if acc[u] == acc[cut] and abs(loss[u] - loss[cut]) <= tol}
    return set(selected) ^ set(reference) <= tied


def test_same_units_with_near_ties():
    """MMS on 30B-sized heads (128 values) and a 600-example split, with a unit, its exact
    copy and a copy scaled by 1 + 1e-6 (val log-loss ~1e-8 apart) at the selection's cut:
    mixed and float64 select the same units (`same_units`) and predict within 1e-4."""
    n, k, layers, heads = 600, 2, 2, 8
    strength = np.r_[2.0, 2.0, 2.0, 1.0, 0.5, np.zeros(layers * heads - 5)]
    rng = np.random.default_rng(7)
    inputs_by_name = {}
    for seed, name in enumerate(("source", "target")):
        preferred = rng.integers(k, size=n)
        sign = np.where(np.arange(k)[None, :] == preferred[:, None], 1.0, -1.0).ravel()
        x = paper_sized_features(
            layers * heads, 128, seed, np.repeat(np.arange(n), k), sign, strength
        )
        x[1] = x[0]  # an exact copy
        x[2] = x[0] * np.float32(1 + 1e-6)  # a near copy
        rows = x.transpose(1, 0, 2).reshape(n * k, layers, heads, 128)
        examples = examples_table(name, preferred.tolist(), k)
        inputs_by_name[name] = probe_input(name, examples, "heads", "plain", rows)
    states = {
        precision: fit(
            "mms", inputs_by_name["source"], {"n_units": 2, "probe_precision": precision}
        )
        for precision in ("float64", "mixed")
    }
    ref, mixed = states["float64"].tensors, states["mixed"].tensors
    acc, loss = ref["unit_val_accuracy"], ref["unit_val_loss"]
    order = np.lexsort((np.arange(len(acc)), loss, -acc))
    assert sorted(order[:3]) == [0, 1, 2]  # the copies lead, the cut falls among them
    assert acc[order[1]] == acc[order[2]] and abs(loss[order[1]] - loss[order[2]]) < LOSS_TIE
    assert same_units(mixed["units"], ref["units"], acc, loss)
    assert not same_units([0, 3], ref["units"], acc, loss)  # a worse unit is no tie
    assert np.array_equal(mixed["unit_val_accuracy"], acc)
    assert np.abs(mixed["unit_val_loss"] - loss).max() < LOSS_TIE
    p64, c64 = predict(states["float64"], inputs_by_name["target"])
    p32, c32 = predict(states["mixed"], inputs_by_name["target"])
    assert np.abs(p32 - p64).max() < 1e-4 and np.array_equal(c32, c64)
    assert c64.mean() > 0.6


def test_newton_step_falls_back_to_float64():
    """A problem whose float32 Hessian overflows is solved in float64; the others keep their
    float32 steps (relative error ~1e-7)."""
    from genies.methods.calibration import _newton_step

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 50, 4, dtype=torch.float64, generator=gen)
    a[1] *= 1e20
    s = torch.full((3, 50), 0.2, dtype=torch.float64)
    grad = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    penalty = torch.ones(4, dtype=torch.float64)
    exact = torch.linalg.solve(torch.bmm(a.transpose(1, 2) * s[:, None], a) + torch.eye(4), grad)
    assert torch.linalg.cholesky_ex(torch.bmm(a.float().transpose(1, 2), a.float()))[1][1] != 0
    step = _newton_step(a, a.float(), s, grad, penalty, 1.0)
    error = ((step - exact).abs().amax(1) / exact.abs().amax(1)).tolist()
    assert error[1] < 1e-12 and max(error[0], error[2]) < 1e-5
    with pytest.raises(ValueError, match="precision"):
        fit_logistic(np.zeros((1, 4, 2)), np.r_[0, 1, 0, 1], precision="float16")
    with pytest.raises(ConfigError, match="probe_precision: 'half' is not allowed"):
        method_params("mms", {"probe_precision": "half"})


def test_fit_logistic_on_texts_without_spread():
    """Identical texts (the embedding layer at the appended EOS) leave only the intercept, the
    labels' log-odds; duplicated texts (rank-deficient Gram matrix) still match sklearn."""
    y = np.r_[np.ones(10), np.zeros(20)]
    for precision in PRECISIONS:
        got = fit_logistic(np.ones((2, 30, 50)), y, precision=precision)
        assert got.converged.all() and not got.coef.any()
        np.testing.assert_allclose(got.intercept, np.log(0.5), atol=1e-9)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 30, 50))
    x[0, 15:] = x[0, :15]
    y = (rng.random(30) < 0.5).astype(float)
    got = fit_logistic(x, y, C=0.7)
    ref = LogisticRegression(C=0.7, tol=1e-12, max_iter=10**5).fit(x[0], y)
    np.testing.assert_allclose(got.coef[0], ref.coef_[0], atol=1e-5)
    assert abs(got.intercept[0] - ref.intercept_[0]) < 1e-5


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("method", ["mms", "lat1"])
def test_fit_does_not_depend_on_threads(method, threads, data, fitted):
    """On several torch threads the units are fitted in chunks side by side (one thread each):
    bit for bit the probes of one thread, and torch's thread count is restored."""
    src = inputs(method, "source", *data["source"])
    torch.set_num_threads(threads)
    try:
        state = fit(method, src, {"n_units": 2}, seed=0)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(TORCH_THREADS)
    assert state.info == fitted[method].info
    for name, value in fitted[method].tensors.items():
        assert np.array_equal(state.tensors[name], value), name
