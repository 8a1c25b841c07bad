"""Paired prompt bootstrap: intervals on the GENIES table's DE averages, and comparisons.

DE = (accuracy - zero-shot accuracy) / capability is a ratio of accuracies measured on prompts,
so each draw of the bootstrap resamples prompts and recomputes all three together:

- Every evaluation dataset's prompts (example ids) are drawn with replacement, as many as it
  has, once per draw. Each pair counts as often as its prompt was drawn, so an accuracy is
  `sum(weights * correct per prompt) / sum(weights * pairs per prompt)`.
- One draw of a dataset serves everything evaluated on it: the generalisation accuracy of every
  intervention and the zero-shot baseline on a shift's target, and the capability
  interventions on its target reference. A prompt therefore weighs the same in the numerator
  and the denominator of DE, in every intervention (the comparisons are paired), and in every
  shift that evaluates on its dataset.
- The capability is the best configured capability intervention in each draw, as it is in the
  cells.

Draws are seeded per dataset from the config seed (`derive_seed(seed, "prompt bootstrap",
dataset)`), so the same predictions give the same intervals, and a model's intervals do not
depend on which other models or shifts are in the run.

A DE average of the GENIES table (avg DE over the GENIES shifts, extreme and probing avg DE)
is the mean over the shifts of its set that have a DE; in each draw it is the mean of the
drawn DEs over the same shifts. Its interval is the percentile interval of the draws
(`intervals` table, joined into the `genies_table` view as `<column>_low` / `_high`).

`comparisons` has, for every ordered pair (intervention, other) of one model, the difference
of their avg DE over the GENIES shifts both have a DE on (`shifts`), its percentile interval
over the same draws, and `ahead_share`, the share of draws in which the intervention's average
is higher, where a tie (equal averages in a draw, as two interventions with identical
predictions always have) counts one half; `tied_share` is the share of ties. So the two orders
of a pair have opposite differences and shares that sum to 1, and identical interventions get
an interval of [0, 0] and a share of exactly 0.5.

A draw in which a capability comes out 0 leaves that shift's DE undefined in that draw; the
draw's average is then over the other shifts. Stored results without their pairs (the
published runs' summaries, `PredictionGroups`) cannot be resampled: an average or comparison
that includes such a cell has no interval. A capability given as a number (the published
target-tuned capabilities) is held fixed in every draw.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from genies.data.shifts import SET_FLAGS
from genies.pipeline.plan import BASELINE
from genies.results.cells import PredictionGroups, cell_options, indexed_shifts, resolve_inputs
from genies.seeds import derive_seed

N_RESAMPLES = 1000
CONFIDENCE = 0.95
#: Shift set -> the genies_table column that averages DE over it.
AVERAGES = {
    "genies": "avg_differential_elicitation",
    "extreme": "extreme_avg_differential_elicitation",
    "probing": "probing_avg_differential_elicitation",
}
INTERVAL_SCHEMA = pa.schema(
    [("model", pa.string()), ("intervention", pa.string()), ("resamples", pa.int64())]
    + [(f"{c}_{end}", pa.float64()) for c in AVERAGES.values() for end in ("low", "high")]
)
COMPARISON_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("intervention", pa.string()),
        ("other", pa.string()),
        ("shifts", pa.int64()),
        ("avg_differential_elicitation", pa.float64()),
        ("other_avg_differential_elicitation", pa.float64()),
        ("difference", pa.float64()),
        ("difference_low", pa.float64()),
        ("difference_high", pa.float64()),
        ("ahead_share", pa.float64()),
        ("tied_share", pa.float64()),
        ("resamples", pa.int64()),
    ]
)
_DE_INPUTS = ("generalization", "baseline", "capability")


def bootstrap_weights(n_examples: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_examples) float64: how often each example is drawn in each draw.

    Each row draws n_examples examples uniformly with replacement
    (`numpy.random.default_rng(seed)`), so every row sums to n_examples.
    """
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_examples, size=(n_resamples, n_examples), dtype=np.int64)
    drawn += np.arange(n_resamples, dtype=np.int64)[:, None] * n_examples
    counts = np.bincount(drawn.ravel(), minlength=n_resamples * n_examples)
    return counts.reshape(n_resamples, n_examples).astype(np.float64)


def bootstrap_accuracies(
    groups: PredictionGroups, keys, n_resamples: int, seed: int, weights_cache=None
) -> dict:
    """key -> (accuracy, (n_resamples,) accuracies of the draws) for prediction groups.

    Groups that evaluate the same dataset share one weight matrix: per-prompt correct counts
    and pair counts of all of them form two (prompts x groups) matrices, and one matrix product
    each gives every group's accuracy in every draw. `weights_cache`, a dict, keeps the weight
    matrices for the next call (another model), keyed by dataset and number of prompts.
    """
    weights_cache = {} if weights_cache is None else weights_cache
    by_dataset: dict[str, list] = {}
    for key in dict.fromkeys(keys):
        by_dataset.setdefault(key[3], []).append(key)
    result = {}
    for dataset, dataset_keys in sorted(by_dataset.items()):
        rows = [groups.rows[key] for key in dataset_keys]
        prompts = np.unique(np.concatenate([groups.example[r] for r in rows]))
        correct = np.zeros((prompts.size, len(rows)))
        pairs = np.zeros((prompts.size, len(rows)))
        for g, r in enumerate(rows):
            local = np.searchsorted(prompts, groups.example[r])
            correct[:, g] = np.bincount(local, weights=groups.correct[r], minlength=prompts.size)
            pairs[:, g] = np.bincount(local, minlength=prompts.size)
        if (dataset, prompts.size) not in weights_cache:
            weights_cache[dataset, prompts.size] = bootstrap_weights(
                prompts.size, n_resamples, derive_seed(seed, "prompt bootstrap", dataset)
            )
        weights = weights_cache[dataset, prompts.size]
        with np.errstate(invalid="ignore", divide="ignore"):
            draws = (weights @ correct) / (weights @ pairs)  # NaN: no pair of it drawn
        point = correct.sum(axis=0) / pairs.sum(axis=0)
        for g, key in enumerate(dataset_keys):
            result[key] = (float(point[g]), draws[:, g])
    return result


def differential_elicitation_draws(
    groups: PredictionGroups,
    model: str,
    interventions,
    shifts,
    options,
    n_resamples,
    seed,
    weights_cache=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point DE (shifts x interventions), drawn DE (draws x shifts x interventions), and
    whether each cell's DE was resampled (shifts x interventions).

    NaN where a cell has no DE: an input is missing or the capability is 0. A DE whose inputs
    include an accuracy stored without its pairs (`PredictionGroups` summaries) has a point but
    no draws. A capability given as a number (`PredictionGroups.capabilities`) is held fixed.
    """
    given = groups.capabilities.get(model, {})
    inputs = {}
    for s, shift in enumerate(shifts):
        for k, intervention in enumerate(interventions):
            _, found, missing = resolve_inputs(groups, model, intervention, shift, options)
            if not missing.keys() & set(_DE_INPUTS):
                caps = given.get(shift.target, (None,))[0], tuple(found["capability"])
                inputs[s, k] = (found["generalization"][0], found["baseline"][0], caps)
    keys = [key for gen, base, (_, caps) in inputs.values() for key in (gen, base, *caps)]
    accuracy = bootstrap_accuracies(
        groups, [key for key in keys if key in groups.rows], n_resamples, seed, weights_cache
    )
    for key in keys:  # accuracies stored without pairs: nothing to resample
        accuracy.setdefault(key, (groups.accuracy(key), None))
    point = np.full((len(shifts), len(interventions)), np.nan)
    draws = np.full((n_resamples, len(shifts), len(interventions)), np.nan)
    resampled = np.zeros((len(shifts), len(interventions)), dtype=bool)
    capability = {}
    for (s, k), (gen, base, caps) in inputs.items():
        if caps not in capability:
            capability[caps] = _capability(caps, accuracy, n_resamples)
        cap_point, cap_draws = capability[caps]
        if not cap_point > 0:
            continue
        point[s, k] = (accuracy[gen][0] - accuracy[base][0]) / cap_point
        if cap_draws is None or accuracy[gen][1] is None or accuracy[base][1] is None:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            drawn = (accuracy[gen][1] - accuracy[base][1]) / cap_draws
        draws[:, s, k] = np.where(cap_draws > 0, drawn, np.nan)
        resampled[s, k] = True
    return point, draws, resampled


def _capability(caps, accuracy, n_resamples):
    """(point, draws) of a capability: the given number held fixed, or the best candidate's
    accuracy in each draw (draws None when a candidate has no pairs to resample)."""
    given, candidates = caps
    if given is not None:
        return given, np.full(n_resamples, given)
    point = max(accuracy[c][0] for c in candidates)
    drawn = [accuracy[c][1] for c in candidates]
    return point, None if any(d is None for d in drawn) else np.max(drawn, axis=0)


def _mean_over(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over axis 1 of the entries where `mask` (broadcast) holds and the value is finite."""
    use = mask & np.isfinite(values)
    count = use.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(use, values, 0.0).sum(axis=1) / count


def _interval(draws: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    finite = draws[np.isfinite(draws)]
    if not finite.size:
        return None, None
    alpha = 1.0 - confidence
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _interval_rows(model, interventions, point, draws, resampled, members, n_resamples, conf):
    rows = []
    for k, intervention in enumerate(interventions):
        row = {"model": model, "intervention": intervention, "resamples": n_resamples}
        for name, column in AVERAGES.items():
            covered = members[name] & np.isfinite(point[:, k])
            low_high = (None, None)
            if resampled[covered, k].all():  # else part of the average cannot be resampled
                low_high = _interval(_mean_over(draws[:, :, k], covered[None, :]), conf)
            row[f"{column}_low"], row[f"{column}_high"] = low_high
        rows.append(row)
    return rows


def _comparison_rows(model, interventions, point, draws, resampled, genies, n_resamples, conf):
    rows = []
    for i, j in itertools.combinations(range(len(interventions)), 2):
        common = genies & np.isfinite(point[:, i]) & np.isfinite(point[:, j])
        if not common.any():
            continue
        difference = np.empty(0)
        if resampled[common, i].all() and resampled[common, j].all():
            difference = _mean_over(draws[:, :, i] - draws[:, :, j], common[None, :])
            difference = difference[np.isfinite(difference)]
        low, high = _interval(difference, conf)
        ahead = float(np.mean(difference > 0)) if difference.size else None
        tied = float(np.mean(difference == 0)) if difference.size else None
        first, second = point[common, i].mean(), point[common, j].mean()
        row = {
            "model": model,
            "intervention": interventions[i],
            "other": interventions[j],
            "shifts": int(common.sum()),
            "avg_differential_elicitation": float(first),
            "other_avg_differential_elicitation": float(second),
            "difference": float(first - second),
            "difference_low": low,
            "difference_high": high,
            "ahead_share": None if ahead is None else ahead + tied / 2,
            "tied_share": tied,
            "resamples": n_resamples,
        }
        mirrored = {
            **row,
            "intervention": row["other"],
            "other": row["intervention"],
            "avg_differential_elicitation": row["other_avg_differential_elicitation"],
            "other_avg_differential_elicitation": row["avg_differential_elicitation"],
            "difference": -row["difference"],
            "difference_low": None if high is None else -high,
            "difference_high": None if low is None else -low,
            "ahead_share": None if ahead is None else 1.0 - row["ahead_share"],
        }
        rows += [row, mirrored]
    return rows


def prompt_bootstrap(
    groups: PredictionGroups,
    shifts: pa.Table,
    *,
    capability_interventions,
    baseline: str = BASELINE,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[pa.Table, pa.Table]:
    """(intervals, comparisons) tables for every model of `groups` over `shifts`.

    Args:
        groups: the predictions, indexed (`genies.results.cells.PredictionGroups`).
        shifts: registry rows (`genies.data.shifts.shifts_table`) of the shifts the cells cover;
            their `in_genies` / `in_extreme_set` / `in_probing_set` flags choose each average's
            shifts.
        capability_interventions, baseline: as for the cells.
        n_resamples, confidence: draws per dataset, coverage of the percentile intervals.
        seed: the config seed (each dataset's draws are seeded from it and the dataset name).
    """
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    options = cell_options(groups, capability_interventions, baseline)
    listed = [shift for _, shift in indexed_shifts(shifts)]
    members = {
        name: np.array(shifts.column(flag).to_pylist(), dtype=bool)
        if flag in shifts.column_names
        else np.zeros(len(listed), dtype=bool)
        for name, flag in SET_FLAGS.items()
    }
    intervals, comparisons, weights_cache = [], [], {}
    by_model: dict[str, list[str]] = {}
    for model, intervention in sorted(groups.pairs()):
        by_model.setdefault(model, []).append(intervention)
    # The matrix products are small: a (1000 x 190) @ (190 x 60) one took 14 ms on OpenBLAS's
    # default threads on a busy 2-core machine and 1.6 ms on one thread.
    with warnings.catch_warnings(), threadpool_limits(1, "blas"):
        warnings.simplefilter("ignore", RuntimeWarning)  # means of all-NaN draws are NaN
        for model, interventions in by_model.items():
            args = (model, interventions) + differential_elicitation_draws(
                groups, model, interventions, listed, options, n_resamples, seed, weights_cache
            )
            intervals += _interval_rows(*args, members, n_resamples, confidence)
            comparisons += _comparison_rows(*args, members["genies"], n_resamples, confidence)
    return (
        pa.Table.from_pylist(intervals, schema=INTERVAL_SCHEMA),
        pa.Table.from_pylist(comparisons, schema=COMPARISON_SCHEMA),
    )
