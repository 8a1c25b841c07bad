"""Representation reading on cached activations: MMS, LAT (stimulus 1 and 2), CRA and CCS.

The five methods are one mechanism (their departures from the published code: docs/fidelity.md);
they differ only in

    method  unit            forward stimulus -> per-text feature     direction rule
    mms     attention head  plain: heads                             mean difference
    lat1    layer           plain: resid                             mean difference
    lat2    layer           lat2:  resid                             mean difference
    cra     attention head  yesno: heads(Yes) - heads(No)            mean difference
    ccs     one layer       yesno: (resid(Yes), resid(No)) at layer  CCS probe

Activations (written by the forward job, `genies.forward.job` / `genies.forward.activations`; read
here, never a model): one safetensors file per (model, stimulus, dataset, split), rows example-major
over the first n examples of the materialised split, k responses each in file order, and for `yesno`
the answers Yes then No (`genies.data.stimuli`):

    heads  float16 [rows, n_layers, n_heads, head_dim]  input of o_proj (per-head attention
                                                        output) at the last token
    resid  float16 [rows, n_layers, hidden]             hidden_states[i] at the last token, the
                                                        input of decoder layer i (0 = embeddings)

rows = n * k (* 2 for yesno); the unflattened [n, k, (2,) ...] form is accepted too. The last
token is the EOS of prompt + response + EOS (plain), the template's last token (lat2), the
answer word (yesno). The forward Parquet beside the file labels its rows (example_id,
response_index, answer); `load_probe_input` checks them against the data when given.

Mechanism (mean-difference methods):
1. Pairs: one per source example, preferred vs one dispreferred drawn with a seeded RNG
   (`derive_seed(seed, "probe-pairs", dataset)`, so every method trained on a dataset sees
   the same pairs), split `train_fraction` (0.7) / rest into train / val pairs, same RNG.
2. Direction per unit: mean feature of the preferred texts minus that of the dispreferred
   texts of the TRAIN pairs. (Upstream used train + val; here the val pairs stay unseen
   because the calibrator is fitted on them.)
3. Selection: per unit an L2 logistic probe (sklearn's objective, C = `probe_c`, solved
   exactly and deterministically by `calibration.fit_logistic`: float32 Newton steps, float64
   gradient and stopping test; `probe_precision: float64` computes all of it in float64) on
   the train texts; units ranked by val-text accuracy, ties by val log-loss then unit index;
   the top `n_units` are kept (the paper says 48 heads / 16 layers, the published code used
   16 for all).
4. Pair score s(a, b) = mean over selected units of cos(f(a)_u - f(b)_u, direction_u),
   antisymmetric: s(b, a) == -s(a, b) exactly.
5. Calibration (paper appendix D) on the source VAL pairs: p = sigmoid(w * s), no intercept,
   fitted on both orientations (`genies.methods.calibration`): no position can leak, and swapping a
   pair gives exactly the complementary probability.

CCS: the unsupervised probe of `genies.methods.ccs` on the train texts' Yes/No features at one layer
(`layer`, default -1 = the last stored layer, i.e. the input of the last decoder layer:
upstream read the final post-norm state, which is not cached). Features are centred per set
(Yes / No). By default (`centre: source`) with the means over all n * k texts of the SOURCE
train split, stored with the probe, so a text's score depends on that text alone (the
paper's rule that examples are evaluated one at a time). `centre: eval` re-centres on the
means over all texts of the dataset being scored, as the published code did: it uses no
labels, but every score then depends on the rest of the evaluation set. The orientation is
chosen on the SOURCE train pairs (flip when the preferred text gets the lower credence more
often than the higher), never with target labels. Pair score = orientation * (c(a) - c(b)) with
c = 0.5 * (p(Yes) + 1 - p(No)); calibrated like the others.

Seeds: everything derives from the config seed through `derive_seed` (sha256 of the seed and
names, not Python's salted `hash`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.numpy import load_file, save_file

from genies.data.materialise import read_examples
from genies.data.predictions import expand_pairs, prediction_run, predictions_table
from genies.io import RunRecord, atomic_path, models_of, write_json, write_parquet
from genies.methods import ccs as ccs_probe
from genies.methods.calibration import (
    PRECISIONS,
    calibrated_probability,
    fit_logistic,
    fit_pair_calibration,
)
from genies.models.layout import read_safetensors_header
from genies.pipeline import interventions as registry
from genies.seeds import derive_seed

# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    tensor: str  # "heads": a unit is an attention head; "resid": a unit is a layer
    stimulus: str  # forward stimulus: plain | lat2 | yesno (feature contrasts Yes and No)
    rule: str  # "mean_difference" or "ccs"


METHODS = {
    name: Method(entry.unit, entry.stimulus, entry.rule)
    for name, entry in registry.REGISTRY.items()
    if entry.family == "probe"
}
CONTRAST = ("yes", "no")  # the readings of a yesno row pair, in row order

COMMON_DEFAULTS = {"train_fraction": 0.7, "calibration_l2": 1.0}
RULE_DEFAULTS = {
    "mean_difference": {
        "n_units": 16,
        "probe_c": 1.0,
        "probe_max_iter": 100,
        "probe_precision": "mixed",
    },
    "ccs": {
        "restarts": 10,
        "epochs": 1000,
        "lr": 1e-3,
        "weight_decay": 0.01,
        "centre": "source",
    },
}


def method_params(method: str, params: Mapping | None = None) -> dict:
    """The method's parameters: defaults overridden by `params`; unknown names are errors."""
    if method not in METHODS:
        raise ValueError(f"unknown probe method {method!r}; expected one of {sorted(METHODS)}")
    out = {
        **COMMON_DEFAULTS,
        **RULE_DEFAULTS[METHODS[method].rule],
        **registry.get(method).defaults,
    }
    unknown = sorted(set(params or {}) - set(out))
    if unknown:
        raise ValueError(f"{method}: unknown parameters {unknown}; known: {sorted(out)}")
    out.update(params or {})
    if not 0 < out["train_fraction"] < 1:
        raise ValueError(f"{method}: train_fraction must be in (0, 1)")
    if out.get("centre", "source") not in ("source", "eval"):
        raise ValueError(f"{method}: centre must be 'source' or 'eval'")
    if out.get("probe_precision", "mixed") not in PRECISIONS:
        raise ValueError(f"{method}: probe_precision must be one of {PRECISIONS}")
    return out


# ----------------------------------------------------------------------------- inputs

_NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


def read_activations(path, tensor: str) -> tuple[np.ndarray, dict]:
    """Memory-map one tensor of an activation file; also return the file's metadata."""
    header = read_safetensors_header(path)
    if tensor not in header.tensors:
        raise ValueError(f"{path}: no tensor {tensor!r} (has {sorted(header.tensors)})")
    entry = header.tensors[tensor]
    if entry["dtype"] not in _NUMPY_DTYPES:
        raise ValueError(f"{path}: tensor {tensor!r} has dtype {entry['dtype']}; store float16")
    shape = tuple(entry["shape"])
    dtype = _NUMPY_DTYPES[entry["dtype"]]
    if not np.prod(shape):
        return np.zeros(shape, dtype), header.metadata
    array = np.memmap(path, dtype=dtype, mode="r", offset=header.offset(tensor), shape=shape)
    return array, header.metadata


@dataclass
class ProbeInput:
    """One dataset's examples and one activation tensor of one stimulus, per unit."""

    dataset: str
    examples: pa.Table  # the n examples the activations cover, in order
    tensor: str
    stimulus: str
    acts: dict[str, np.ndarray]  # reading (the stimulus, or yes / no) -> [n, k, n_units, dim]
    units: list  # per unit: [layer, head] (heads) or layer (resid)
    n_layers: int | None = None  # the model's layers (None: all of them are stored)
    # per example, from the forward job's context policy (None: nothing was cut or skipped);
    # a skipped example's activations are zeros and must not be read
    skipped: np.ndarray | None = None
    prompt_tokens_cut: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return next(iter(self.acts.values())).shape

    def reading(self, name: str, rows, responses, units) -> np.ndarray:
        """float32 [m, len(units), dim] of texts (rows[i], responses[i]) in one reading."""
        arr = self.acts[name]
        r, j, u = np.asarray(rows)[:, None], np.asarray(responses)[:, None], np.asarray(units)
        return arr[r, j, u[None, :]].astype(np.float32)

    def features(self, rows, responses, units) -> np.ndarray:
        """The per-text feature: the activation, or Yes minus No for the contrast stimulus."""
        if self.stimulus != "yesno":
            return self.reading(self.stimulus, rows, responses, units)
        x = self.reading("yes", rows, responses, units)
        x -= self.reading("no", rows, responses, units)
        return x


def probe_input(
    dataset, examples, tensor, stimulus, array, layers=None, model_layers=None
) -> ProbeInput:
    """Wrap one activation tensor ([rows, ...] forward layout, or [n, k, (2,) ...])."""
    k = int(examples.column("n_responses")[0].as_py())
    answers = 2 if stimulus == "yesno" else 1
    per_text = {"heads": 3, "resid": 2}[tensor]
    text_shape = array.shape[-per_text:]
    n = array.shape[0] if array.ndim > per_text + 1 else array.shape[0] // (k * answers)
    if array.size != n * k * answers * int(np.prod(text_shape)) or n == 0:
        raise ValueError(
            f"{dataset}/{stimulus}: {tensor} of shape {array.shape} is not "
            f"[examples x {k} responses{' x 2 answers' if answers == 2 else ''}, "
            f"{', '.join(map(str, text_shape))}]"
        )
    if examples.num_rows < n:
        raise ValueError(f"{dataset}: activations cover {n} examples, the data has fewer")
    arr = array.reshape(n, k, answers, -1, array.shape[-1])
    if stimulus == "yesno":
        acts = {name: arr[:, :, a] for a, name in enumerate(CONTRAST)}
    else:
        acts = {stimulus: arr[:, :, 0]}
    n_layers = text_shape[0]
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    if tensor == "heads":
        units = [[layer, h] for layer in layers for h in range(text_shape[1])]
    else:
        units = layers
    return ProbeInput(dataset, examples.slice(0, n), tensor, stimulus, acts, units, model_layers)


def _check_rows(rows_file, examples: pa.Table, split: str, stimulus: str) -> None:
    """The forward Parquet's row labels must be the data's examples, responses, answers."""
    names = ["example_id", "response_index", "answer"]
    filters = [("split", "=", split), ("stimulus", "=", stimulus)]
    got = pq.read_table(rows_file, columns=names, filters=filters).to_pydict()
    answers = 2 if stimulus == "yesno" else 1
    want = {name: [] for name in names}
    cols = examples.select(["example_id", "n_responses"]).to_pydict()
    for eid, k in zip(cols["example_id"], cols["n_responses"], strict=True):
        want["example_id"] += [eid] * (k * answers)
        want["response_index"] += [j for j in range(k) for _ in range(answers)]
        want["answer"] += list(range(answers)) * k
    if got != want:
        raise ValueError(
            f"{rows_file}: its {split}/{stimulus} rows are not the first {examples.num_rows} "
            "examples of the data in order; rerun the forward job"
        )


def load_probe_input(
    method: str, dataset: str, split: str, data_file, activation_file, rows_file=None, limit=None
) -> ProbeInput:
    """Read the data and the method's tensor of the forward job's activation file (tensor
    "<split>/<stimulus>/<unit>", `genies.forward.job`); never a model."""
    spec = METHODS[method]
    name = f"{split}/{spec.stimulus}/{spec.tensor}"
    array, meta = read_activations(activation_file, name)
    stored = meta.get(f"{name}.layers")
    inp = probe_input(
        dataset,
        read_examples(data_file, limit),
        spec.tensor,
        spec.stimulus,
        array,
        json.loads(stored) if stored else None,
        int(meta["num_layers"]) if stored and "num_layers" in meta else None,
    )
    if rows_file is not None:
        _check_rows(rows_file, inp.examples, split, spec.stimulus)
        inp.skipped, inp.prompt_tokens_cut = _context_of(rows_file, inp.examples, split, spec)
    return inp


def _context_of(rows_file, examples: pa.Table, split: str, spec: Method):
    """Per example: whether any of its texts was skipped, and the most prompt tokens cut."""
    names = ["example_id", "skipped", "prompt_tokens_cut"]
    filters = [("split", "=", split), ("stimulus", "=", spec.stimulus)]
    rows = pq.read_table(rows_file, columns=names, filters=filters).to_pydict()
    index = {eid: i for i, eid in enumerate(examples.column("example_id").to_pylist())}
    skipped = np.zeros(len(index), dtype=bool)
    cut = np.zeros(len(index), dtype=np.int32)
    for eid, skip, n in zip(rows["example_id"], rows["skipped"], rows["prompt_tokens_cut"],
                            strict=True):  # fmt: skip
        skipped[index[eid]] |= bool(skip)
        cut[index[eid]] = max(cut[index[eid]], n)
    return skipped, cut


# ----------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class TrainingPairs:
    row: np.ndarray  # example row of each pair (one pair per example)
    preferred: np.ndarray
    dispreferred: np.ndarray
    train: np.ndarray  # pair indices, ascending
    val: np.ndarray

    def texts(self, which: np.ndarray):
        """Rows and responses of the preferred texts, then of the dispreferred ones."""
        rows = np.concatenate([self.row[which], self.row[which]])
        return rows, np.concatenate([self.preferred[which], self.dispreferred[which]])


def training_pairs(
    examples: pa.Table, dataset: str, seed: int, train_fraction: float, skipped=None
):
    """One seeded pair per example, split train / val; examples the forward job skipped
    (they did not fit the model's context) are left out of both, without changing the draws
    of the others."""
    cols = examples.select(["preferred", "dispreferred"]).to_pydict()
    n = len(cols["preferred"])
    if n < 2:
        raise ValueError(f"{dataset}: probes need at least 2 training examples, got {n}")
    rng = np.random.default_rng(derive_seed(seed, "probe-pairs", dataset))
    disp = np.array([others[rng.integers(len(others))] for others in cols["dispreferred"]])
    order = rng.permutation(n)
    n_train = min(max(int(train_fraction * n), 1), n - 1)
    train, val = np.sort(order[:n_train]), np.sort(order[n_train:])
    if skipped is not None and skipped.any():
        train, val = train[~skipped[train]], val[~skipped[val]]
        if not len(train) or not len(val):
            raise ValueError(f"{dataset}: too few training examples fit the model's context")
    return TrainingPairs(
        np.arange(n),
        np.asarray(cols["preferred"], dtype=np.int64),
        disp.astype(np.int64),
        train,
        val,
    )


# ----------------------------------------------------------------------------- state


@dataclass
class ProbeState:
    method: str
    dataset: str  # the dataset it was fitted on
    seed: int
    params: dict
    tensors: dict  # name -> np.ndarray
    info: dict  # JSON-serialisable: selected units, calibration weight, diagnostics


def save_state(state: ProbeState, tensors_path, info_path, provenance=None) -> None:
    """Tensors as safetensors, everything else as JSON (no pickle)."""
    with atomic_path(tensors_path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in state.tensors.items()}, str(tmp))
    fields = {k: getattr(state, k) for k in ("method", "dataset", "seed", "params", "info")}
    write_json({**fields, "provenance": provenance or {}}, info_path)


def load_state(tensors_path, info_path) -> ProbeState:
    fields = json.loads(Path(info_path).read_text())
    fields.pop("provenance", None)
    return ProbeState(tensors=load_file(str(tensors_path)), **fields)


# ----------------------------------------------------------------------------- mean difference

#: Units are fitted in chunks of at most `_CHUNK_BYTES` of float64 features, and in at least
#: `_MIN_CHUNKS` chunks so that threads have work to share. The chunks do not depend on the
#: thread count: the batched products round differently for another batch of units, so chunks
#: cut per thread gave other bits (val losses 1e-12 apart) on 2 threads than on 1.
_CHUNK_BYTES = 64 << 20
_MIN_CHUNKS = 8


def _map_on_threads(function, items, workers: int) -> list:
    """`function` over `items` on `workers` threads, each running torch on one thread.

    Independent chunks side by side keep scaling on a machine whose cores are busy, where
    torch's own threads (which wait for each other many times per operation) made 30B-sized
    fits up to 10x slower on 2 threads than on 1 (`bench/bench_probes.py --30b`). Each chunk's
    result is the same as on one thread. A single chunk runs on torch's own threads."""
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(function, items))
    finally:
        torch.set_num_threads(workers)


def _cosine_scores(fa, fb, directions) -> np.ndarray:
    """Mean over units of cos(fa - fb, direction); a zero vector has cosine 0."""
    diff = fa - fb
    dots = np.einsum("pud,ud->pu", diff, directions)
    norms = np.linalg.norm(diff, axis=2) * np.linalg.norm(directions, axis=1)
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return cos.astype(np.float64).mean(axis=1)


def _fit_mean_difference(inp: ProbeInput, pairs: TrainingPairs, p: dict, seed):
    _, _, n_units, dim = inp.shape
    rows_tr, resp_tr = pairs.texts(pairs.train)
    rows_va, resp_va = pairs.texts(pairs.val)
    t, v = len(pairs.train), len(pairs.val)
    y_tr = np.r_[np.ones(t), np.zeros(t)]
    y_va = np.r_[np.ones(v), np.zeros(v)]
    directions = np.empty((n_units, dim), np.float32)
    val_acc, val_loss = np.empty(n_units), np.empty(n_units)

    def fit_chunk(chunk) -> int:
        x_tr = inp.features(rows_tr, resp_tr, chunk).transpose(1, 0, 2)  # [c, 2t, d]
        x_va = inp.features(rows_va, resp_va, chunk).transpose(1, 0, 2)
        directions[chunk] = x_tr[:, :t].mean(1, dtype=np.float64) - x_tr[:, t:].mean(
            1, dtype=np.float64
        )
        fit = fit_logistic(
            x_tr,
            y_tr,
            C=p["probe_c"],
            max_iter=p["probe_max_iter"],
            precision=p["probe_precision"],
        )
        z = fit.decision(x_va)
        val_acc[chunk] = ((z > 0) == y_va).mean(1)
        val_loss[chunk] = (np.logaddexp(0.0, z) - y_va * z).mean(1)
        return int(fit.converged.sum())

    workers = torch.get_num_threads()
    per_unit = 8 * 3 * (len(rows_tr) + len(rows_va)) * dim
    step = max(1, min(_CHUNK_BYTES // per_unit, -(-n_units // _MIN_CHUNKS)))
    chunks = [np.arange(i, min(i + step, n_units)) for i in range(0, n_units, step)]
    converged = sum(_map_on_threads(fit_chunk, chunks, workers))
    ranking = np.lexsort((np.arange(n_units), val_loss, -val_acc))  # last key sorts first
    selected = ranking[: min(int(p["n_units"]), n_units)]
    tensors = {
        "units": selected.astype(np.int64),
        "directions": directions[selected],
        "unit_val_accuracy": val_acc,
        "unit_val_loss": val_loss,
    }
    info = {
        "selected": [inp.units[u] for u in selected],
        "n_units_available": n_units,
        "probes_converged": converged,
    }
    return tensors, info


def _score_mean_difference(state: ProbeState, inp: ProbeInput, rows, a, b) -> np.ndarray:
    units = state.tensors["units"]
    fa = inp.features(rows, a, units)
    fb = inp.features(rows, b, units)
    return _cosine_scores(fa, fb, state.tensors["directions"])


# ----------------------------------------------------------------------------- CCS


def _ccs_layer(inp: ProbeInput, layer: int) -> int:
    if layer < 0 and inp.n_layers is not None:  # a subset is stored: count from the model's last
        layer += inp.n_layers
    if layer < 0:
        if -layer > len(inp.units):
            raise ValueError(f"ccs layer {layer}: only {len(inp.units)} layers are stored")
        return len(inp.units) + layer
    if layer not in inp.units:
        raise ValueError(f"ccs layer {layer} is not among the stored layers {inp.units}")
    return inp.units.index(layer)


def _contrast(inp: ProbeInput, unit: int, rows, responses):
    units = np.array([unit])
    return tuple(
        inp.reading(name, rows, responses, units)[:, 0].astype(np.float64) for name in CONTRAST
    )


def _all_texts(inp: ProbeInput):
    n, k = inp.shape[:2]
    return np.repeat(np.arange(n), k), np.tile(np.arange(k), n)


def _fit_ccs(inp: ProbeInput, pairs: TrainingPairs, p: dict, seed):
    unit = _ccs_layer(inp, int(p["layer"]))
    centre_yes, centre_no = (x.mean(0) for x in _contrast(inp, unit, *_all_texts(inp)))
    rows, responses = pairs.texts(pairs.train)
    x_yes, x_no = _contrast(inp, unit, rows, responses)
    probe = ccs_probe.fit_ccs(
        x_yes - centre_yes,
        x_no - centre_no,
        restarts=int(p["restarts"]),
        epochs=int(p["epochs"]),
        lr=p["lr"],
        weight_decay=p["weight_decay"],
        seed=derive_seed(seed, "ccs", inp.dataset),
    )
    c = ccs_probe.credence(probe, x_yes - centre_yes, x_no - centre_no)
    t = len(pairs.train)
    wins, losses = int((c[:t] > c[t:]).sum()), int((c[:t] < c[t:]).sum())
    orientation = 1.0 if wins >= losses else -1.0
    tensors = {
        "unit": np.array([unit], np.int64),
        "weight": probe.weight,
        "bias": np.array([probe.bias]),
        "orientation": np.array([orientation]),
        "centre_yes": centre_yes,
        "centre_no": centre_no,
        "restart_losses": probe.losses,
    }
    info = {
        "selected": [inp.units[unit]],
        "n_units_available": len(inp.units),
        "source_train_wins": wins,
        "source_train_losses": losses,
    }
    return tensors, info


def _score_ccs(state: ProbeState, inp: ProbeInput, rows, a, b) -> np.ndarray:
    ts = state.tensors
    unit = int(ts["unit"][0])
    if state.params["centre"] == "eval":
        centres = [x.mean(0) for x in _contrast(inp, unit, *_all_texts(inp))]
    else:
        centres = [ts["centre_yes"], ts["centre_no"]]
    probe = ccs_probe.CCSProbe(ts["weight"], float(ts["bias"][0]), ts["restart_losses"])

    def credence(responses):
        x_yes, x_no = _contrast(inp, unit, rows, responses)
        return ccs_probe.credence(probe, x_yes - centres[0], x_no - centres[1])

    return ts["orientation"][0] * (credence(a) - credence(b))


# ----------------------------------------------------------------------------- fit / predict

_RULES = {
    "mean_difference": (_fit_mean_difference, _score_mean_difference),
    "ccs": (_fit_ccs, _score_ccs),
}


def _check_input(inp: ProbeInput, spec: Method) -> None:
    if (inp.tensor, inp.stimulus) != (spec.tensor, spec.stimulus):
        raise ValueError(
            f"{inp.dataset}: {inp.stimulus}/{inp.tensor} activations given, the method reads "
            f"{spec.stimulus}/{spec.tensor}"
        )


def pair_scores(state: ProbeState, inp: ProbeInput, rows, a, b) -> np.ndarray:
    """Antisymmetric score that text (rows, a) is preferred to (rows, b); before calibration."""
    spec = METHODS[state.method]
    _check_input(inp, spec)
    n_units, dim = inp.shape[2:]
    if n_units != state.info["n_units_available"] or dim != state.info["dim"]:
        raise ValueError(
            f"{inp.dataset}: activations have {n_units} units of {dim} values; the probe was "
            f"fitted on {state.info['n_units_available']} of {state.info['dim']} (another model?)"
        )
    return _RULES[spec.rule][1](state, inp, np.asarray(rows), np.asarray(a), np.asarray(b))


def fit(method: str, source: ProbeInput, params: Mapping | None = None, seed: int = 0):
    """Fit a probe method on a source dataset's cached activations -> ProbeState."""
    p = method_params(method, params)
    spec = METHODS[method]
    _check_input(source, spec)
    pairs = training_pairs(
        source.examples, source.dataset, seed, p["train_fraction"], source.skipped
    )
    tensors, info = _RULES[spec.rule][0](source, pairs, p, seed)
    info = {
        **info,
        "dim": int(source.shape[3]),
        "n_pairs_train": len(pairs.train),
        "n_pairs_val": len(pairs.val),
    }
    state = ProbeState(method, source.dataset, int(seed), p, tensors, info)
    val = pairs.val
    s_val = pair_scores(
        state, source, pairs.row[val], pairs.preferred[val], pairs.dispreferred[val]
    )
    state.info["calibration_weight"] = fit_pair_calibration(s_val, p["calibration_l2"])
    state.info["source_val_accuracy"] = float(np.mean(s_val > 0))
    return state


def predict(state: ProbeState, target: ProbeInput) -> tuple[np.ndarray, np.ndarray]:
    """(prob_preferred, correct) per evaluation pair, in `expand_pairs` order."""
    pairs = expand_pairs(target.examples)
    s = pair_scores(
        state,
        target,
        pairs["example_row"],
        pairs["preferred_response"],
        pairs["dispreferred_response"],
    )
    logit = state.info["calibration_weight"] * s
    prob = calibrated_probability(s, state.info["calibration_weight"])
    if target.skipped is not None:  # not scored: no activations were recorded
        skipped = target.skipped[pairs["example_row"]]
        prob, logit = np.where(skipped, np.nan, prob), np.where(skipped, 0.0, logit)
    return prob, logit > 0


# ----------------------------------------------------------------------------- jobs


def run_fit(
    method,
    dataset,
    data_file,
    activations,
    rows_file,
    state_paths,
    *,
    params,
    seed,
    limit,
    threads=1,
):
    """The fit job: `activations`/`rows_file` are the forward job's outputs for the method's
    stimulus on the train split; `state_paths` = (tensors .safetensors, info .json).

    Runs on `threads` threads (default 1), the CPUs the job holds: the mean-difference methods
    fit chunks of units side by side, one torch thread each, which gives the same probes as
    one thread; CCS runs torch's own threads."""
    torch.set_num_threads(threads)
    run = RunRecord(
        "fit",
        intervention=method,
        train=dataset,
        params=dict(params or {}),
        models=models_of(rows_file),
    )
    source = load_probe_input(method, dataset, "train", data_file, activations, rows_file, limit)
    state = fit(method, source, params, seed)
    save_state(state, *state_paths, provenance=run.finish(n_examples=source.shape[0]))


def run_predict(
    model,
    method,
    train,
    eval_dataset,
    data_file,
    activations,
    rows_file,
    state_paths,
    out_path,
    *,
    limit,
    threads=1,
):
    """The predict job: per-pair predictions of a fitted probe on an eval split."""
    torch.set_num_threads(threads)
    run = prediction_run(model, method, train, eval_dataset, rows_file)
    state = load_state(*state_paths)
    target = load_probe_input(
        method, eval_dataset, "test", data_file, activations, rows_file, limit
    )
    prob, correct = predict(state, target)
    pairs = expand_pairs(target.examples)
    context = {}
    if target.skipped is not None:
        rows = pairs["example_row"]
        context = {
            "skipped": target.skipped[rows],
            "prompt_tokens_cut": target.prompt_tokens_cut[rows],
        }
    table = predictions_table(model, method, train, eval_dataset, pairs, prob, correct, **context)
    write_parquet(table, out_path, run.finish(params=state.params, seed=state.seed))
