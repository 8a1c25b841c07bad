"""Cells: the numbers of one (model, intervention, shift).

A cell reads five inputs, each the predictions of one (model, intervention, train, eval) group,
i.e. one file `results/predictions/{model}/{intervention}/{train}/{eval}.parquet`:

==================  ======================================================================
generalization      (intervention, train = source, eval = target)
source_id           (intervention, train = source, eval = source)
baseline            (zero_shot, train = none, eval = target)
capability          (c, train = target_reference, eval = target_reference) for every
                    configured capability intervention c; the best accuracy wins (ties: the
                    first in the configured order) and its name is recorded
id_target           (intervention, train = target_reference, eval = target_reference), the
                    paper's "ID target accuracy" (the target itself when no reference is set)
==================  ======================================================================

Interventions that do not train (zero_shot, random, or any intervention whose predictions use
train = none) are looked up with train = none whatever the cell's train dataset is: for
zero-shot, generalisation, source ID and ID target accuracy are plain accuracies on the
respective eval datasets. Only imported runs stored per training set are found first: the
published zero-shot runs (`genies.results.published`), one per source, whose baseline is
(zero_shot, train = source, eval = target). The published runs also bring groups known only by
their accuracy and a fixed capability per (model, target) (`PredictionGroups`).

The numbers themselves come from `genies.results.metrics` (accuracy, prompt bootstrap interval,
elicitation, DE, capable DE, both RMS calibration errors; the standard one takes each pair's
`correct` flag as its outcome, so the random baseline's coin counts). A missing input leaves
NULL in what depends on it, and `missing` names the prediction file that would produce it
(`input: path; input: path`). The capability is NULL unless *every* configured capability
intervention has run, so a published capability never changes when a late job finishes. When
the capability is 0, elicitation and DE are undefined and stay NULL although nothing is missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genies.data.shifts import Shift
from genies.errors import GeniesError
from genies.io import write_json
from genies.pipeline.plan import BASELINE, NO_TRAIN, UNTRAINED, cell_inputs, prediction_path
from genies.results import metrics
from genies.results.database import connect
from genies.results.verify import read_checked

#: Interventions whose target-reference accuracy is the target-tuned capability by default.
DEFAULT_CAPABILITY_INTERVENTIONS = ("lora",)
#: The inputs of a cell, in the order `missing` lists them.
CELL_INPUTS = ("generalization", "source_id", "baseline", "capability", "id_target")
_KEYS = ("model", "intervention", "train", "eval")

CELL_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("intervention", pa.string()),
        ("shift_index", pa.int32()),
        ("shift_id", pa.string()),
        ("source", pa.string()),
        ("target", pa.string()),
        ("target_reference", pa.string()),
        ("label", pa.string()),
        ("train", pa.string()),
        ("generalization_accuracy", pa.float64()),
        ("generalization_low", pa.float64()),
        ("generalization_high", pa.float64()),
        ("pairs", pa.int64()),
        ("examples", pa.int64()),
        ("pairs_skipped", pa.int64()),  # did not fit the model's context (context_policy skip)
        ("pairs_cut", pa.int64()),  # scored with the start of the prompt cut off
        ("source_id_accuracy", pa.float64()),
        ("baseline_accuracy", pa.float64()),
        ("capability", pa.float64()),
        ("capability_intervention", pa.string()),
        ("elicitation", pa.float64()),
        ("differential_elicitation", pa.float64()),
        ("capable_differential_elicitation", pa.float64()),
        ("rms_calibration_error", pa.float64()),
        ("rms_calibration_error_genies", pa.float64()),
        ("id_target_accuracy", pa.float64()),
        ("complete", pa.bool_()),
        ("missing", pa.string()),
    ]
)


class IncompleteCellError(GeniesError):
    """A caller needs a complete cell, but prediction files it reads are missing."""

    def __init__(self, cell: str, missing: dict[str, list[str]]):
        self.cell = cell
        self.missing = missing
        jobs = sorted({p for paths in missing.values() for p in paths})
        lines = [f"  {name}: {', '.join(paths)}" for name, paths in missing.items()]
        super().__init__(
            f"cell {cell} is incomplete; missing predictions:\n"
            + "\n".join(lines)
            + "\nbuild them with: snakemake "
            + " ".join(jobs)
        )


class PredictionGroups:
    """Row indices of every (model, intervention, train, eval) group of a predictions table.

    Rows keep the table's order (evaluation order within a file), which the "genies" RMS
    calibration error depends on. Per-group numbers are computed once and cached, because many
    cells share a group (e.g. the zero-shot baseline of a target).
    """

    def __init__(
        self,
        predictions: pa.Table,
        *,
        n_resamples=1000,
        confidence=0.95,
        seed=0,
        summaries: pa.Table | None = None,
        capabilities: pa.Table | None = None,
    ):
        self.n_resamples, self.confidence, self.seed = n_resamples, confidence, seed
        self.correct = _numpy(predictions.column("correct")).astype(bool)
        self.prob = _numpy(predictions.column("prob_preferred")).astype(float)
        # Pairs the context policy skipped are not scored (NaN): every number leaves them out
        # and the cell counts them, as it counts pairs whose prompt was cut.
        self.skipped = _flag(predictions, "skipped", lambda c: c.astype(bool))
        self.cut = _flag(predictions, "prompt_tokens_cut", lambda c: c > 0)
        self.context: dict[tuple[str, str, str, str], tuple[int, int]] = {}
        self.example = _example_codes(predictions)
        self.rows: dict[tuple[str, str, str, str], np.ndarray] = {}
        self._stats: dict[tuple, dict] = {}
        # Stored results (the published runs, genies.results.published): `summaries` are groups
        # known only by their accuracy (runs stored without pairs: no interval, counts or
        # calibration); `capabilities` fixes the capability of each (model, target) of the
        # models it lists, which then take it from there only.
        self.summaries = {
            tuple(r[k] for k in _KEYS): r["accuracy"]
            for r in (summaries.to_pylist() if summaries is not None else ())
        }
        self.capabilities: dict[str, dict[str, tuple[float, str]]] = {}
        for r in capabilities.to_pylist() if capabilities is not None else ():
            by_target = self.capabilities.setdefault(r["model"], {})
            by_target[r["target"]] = (r["capability"], r["capability_intervention"])
        if predictions.num_rows == 0:
            return
        combined = np.zeros(predictions.num_rows, dtype=np.int64)
        columns = []
        for name in _KEYS:
            codes, values = _codes(predictions.column(name))
            combined = combined * max(len(values), 1) + codes
            columns.append((codes, values))
        order = np.argsort(combined, kind="stable")
        ordered = combined[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        for start, stop in zip(starts, np.r_[starts[1:], len(order)], strict=True):
            first = order[start]
            key = tuple(values[codes[first]] for codes, values in columns)
            rows = order[start:stop]
            self.context[key] = (int(self.skipped[rows].sum()), int(self.cut[rows].sum()))
            self.rows[key] = rows[~self.skipped[rows]]

    @cached_property
    def untrained(self) -> set[str]:
        """Interventions that have predictions with train = none (for any model)."""
        return {i for _, i, train, _ in self._keys() if train == NO_TRAIN}

    def pairs(self) -> set[tuple[str, str]]:
        return {(model, intervention) for model, intervention, _, _ in self._keys()}

    def _keys(self) -> list[tuple[str, str, str, str]]:
        return [*self.rows, *self.summaries]

    def find(self, key):
        """The group of `key`, else its train = none group (untrained interventions), else None."""
        for candidate in (key, (key[0], key[1], NO_TRAIN, key[3])):
            if candidate in self.rows or candidate in self.summaries:
                return candidate
        return None

    def accuracy(self, key) -> float:
        return self._get(key, "accuracy", lambda i: metrics.accuracy(self.correct[i]))

    def interval(self, key) -> tuple[float, float]:
        return self._get(
            key,
            "interval",
            lambda i: metrics.bootstrap_interval(
                self.correct[i],
                self.example[i],
                n_resamples=self.n_resamples,
                confidence=self.confidence,
                seed=self.seed,
            ),
        )

    def rms(self, key, method: str) -> float | None:
        def compute(i):
            outcomes = self.correct[i] if method == "standard" else None
            return _finite(metrics.rms_calibration_error(self.prob[i], method, outcomes))

        return self._get(key, f"rms_{method}", compute)

    def counts(self, key) -> tuple[int, int]:
        return self._get(key, "counts", lambda i: (len(i), len(np.unique(self.example[i]))))

    def _get(self, key, name, compute):
        if key not in self.rows:  # a summary: its accuracy and nothing that needs pairs
            return self.summaries[key] if name == "accuracy" else _WITHOUT_PAIRS.get(name)
        stats = self._stats.setdefault(key, {})
        if name not in stats:
            stats[name] = compute(self.rows[key])
        return stats[name]


_WITHOUT_PAIRS = {"interval": (None, None), "counts": (None, None)}


def _example_codes(predictions: pa.Table) -> np.ndarray:
    """The bootstrap unit of every row: its example id.

    Rows without one (published pairs that cannot be matched to the data) keep the examples of
    their run: a row starts a new example at pair_index 0 (or unknown) or after a row with an
    id, and otherwise belongs to the example of the row before it.
    """
    column = predictions.column("example_id")
    if not column.null_count:
        return _codes(column)[0]
    encoded = pc.dictionary_encode(column.combine_chunks())
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    unmatched = codes < 0
    pair_index = pc.fill_null(predictions.column("pair_index"), 0).to_numpy()
    starts = unmatched & ((pair_index == 0) | ~np.r_[False, unmatched[:-1]])
    codes[unmatched] = len(encoded.dictionary) + np.cumsum(starts)[unmatched] - 1
    return codes


def _flag(predictions: pa.Table, name: str, test) -> np.ndarray:
    """A per-row boolean from an optional column (tables built without it: all False)."""
    if name not in predictions.column_names:
        return np.zeros(predictions.num_rows, dtype=bool)
    return test(_numpy(predictions.column(name)))


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    return column.to_numpy() if column.num_chunks else np.array([])


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """Integer codes (int64) and the distinct values of a string column."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), (
        encoded.dictionary.to_pylist()
    )


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def indexed_shifts(shifts) -> list[tuple[int, Shift]]:
    """(shift_index, Shift) of a registry table (its `shift_index`) or of a list (its order)."""
    if isinstance(shifts, pa.Table):
        fields = ("source", "target", "target_reference", "label", "category")
        rows = shifts.to_pylist()
        return [
            (row.get("shift_index", i), Shift(**{f: row.get(f) for f in fields}))
            for i, row in enumerate(rows)
        ]
    return list(enumerate(shifts))


def cell_options(groups: PredictionGroups, capability_interventions, baseline=BASELINE) -> dict:
    """The keyword arguments of `cell_inputs` for the cells of `groups`."""
    capability_interventions = tuple(capability_interventions)
    if not capability_interventions:
        raise ValueError("capability_interventions is empty: name at least one intervention")
    return {
        "capability_interventions": capability_interventions,
        # Besides the known ones, any intervention with train = none predictions is untrained.
        "untrained": set(UNTRAINED) | groups.untrained,
        "baseline": baseline,
    }


def resolve_inputs(groups: PredictionGroups, model, intervention, shift, options):
    """(inputs, found, missing) of a cell: the keys of `cell_inputs`, the group that holds each
    (None if absent), and input name -> the prediction paths that are missing."""
    inputs = cell_inputs(model, intervention, shift, **options)
    # Runs of untrained interventions stored per training set win over their train = none runs:
    # the published zero-shot runs were made once per source, and the published baseline is the
    # source's run (genies.results.published). The workflow's own untrained runs all have
    # train = none.
    specific = cell_inputs(model, intervention, shift, **{**options, "untrained": ()})
    specific["baseline"] = [(model, options["baseline"], shift.source, shift.target)]
    found = {name: [groups.find(k) for k in specific[name]] for name in inputs}
    missing = {
        name: [prediction_path(*k) for k, f in zip(inputs[name], hits, strict=True) if f is None]
        for name, hits in found.items()
    }
    fixed = groups.capabilities.get(model)
    if fixed is not None:  # this model's capability comes from the capabilities table only
        found["capability"] = []
        absent = shift.target not in fixed
        missing["capability"] = [f"capabilities table ({model}, {shift.target})"] if absent else []
    return inputs, found, {name: paths for name, paths in missing.items() if paths}


def _cell(groups: PredictionGroups, model, intervention, shift, index, options) -> dict:
    inputs, found, missing = resolve_inputs(groups, model, intervention, shift, options)

    def acc(name):
        key = found[name][0]
        return None if name in missing else groups.accuracy(key)

    gen_key = found["generalization"][0]
    row = {
        "model": model,
        "intervention": intervention,
        "shift_index": index,
        "shift_id": shift.shift_id,
        "source": shift.source,
        "target": shift.target,
        "target_reference": shift.target_reference,
        "label": shift.label,
        "train": (gen_key or inputs["generalization"][0])[2],
        "generalization_accuracy": acc("generalization"),
        "source_id_accuracy": acc("source_id"),
        "baseline_accuracy": acc("baseline"),
        "id_target_accuracy": acc("id_target"),
        "complete": not missing,
        "missing": "; ".join(f"{n}: {p}" for n, paths in missing.items() for p in paths) or None,
    }
    if gen_key is not None:
        row["generalization_low"], row["generalization_high"] = groups.interval(gen_key)
        row["pairs"], row["examples"] = groups.counts(gen_key)
        row["pairs_skipped"], row["pairs_cut"] = groups.context.get(gen_key, (0, 0))
        row["rms_calibration_error"] = groups.rms(gen_key, "standard")
        row["rms_calibration_error_genies"] = groups.rms(gen_key, "genies")
    fixed = groups.capabilities.get(model, {}).get(shift.target)
    if fixed is not None:
        row["capability"], row["capability_intervention"] = fixed
    elif "capability" not in missing:
        # max() keeps the first of equal accuracies: ties go to the earlier configured name.
        best = max(found["capability"], key=groups.accuracy)
        row["capability"] = groups.accuracy(best)
        row["capability_intervention"] = best[1]
    capability, baseline = row.get("capability"), row["baseline_accuracy"]
    if capability is not None and capability > 0:
        if baseline is not None:
            row["capable_differential_elicitation"] = metrics.capable_differential_elicitation(
                baseline, capability
            )
        if row["generalization_accuracy"] is not None:
            row["elicitation"] = metrics.elicitation(row["generalization_accuracy"], capability)
            if baseline is not None:
                row["differential_elicitation"] = metrics.differential_elicitation(
                    row["generalization_accuracy"], baseline, capability
                )
    return row


def compute_cells(
    predictions: pa.Table,
    shifts,
    *,
    capability_interventions: Iterable[str] = DEFAULT_CAPABILITY_INTERVENTIONS,
    baseline: str = BASELINE,
    expected: Iterable[tuple[str, str]] = (),
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pa.Table:
    """One row (CELL_SCHEMA) per shift and (model, intervention) found in `predictions`.

    Args:
        predictions: rows with PREDICTION_SCHEMA, in evaluation order within each group.
        shifts: rows of the registry table (their `shift_index` is kept) or a list of `Shift`
            (indexed in its order): one cell per shift for every (model, intervention).
        capability_interventions: candidates for the target-tuned capability.
        baseline: the intervention whose train = none accuracy on the target is the baseline.
        expected: extra (model, intervention) pairs to give cells even without any predictions.
        n_resamples, confidence, seed: of the prompt bootstrap interval of the generalisation
            accuracy (`genies.results.metrics.bootstrap_interval`; same seed for every cell).
    """
    groups = PredictionGroups(
        predictions, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    return cells_table(
        groups,
        shifts,
        capability_interventions=capability_interventions,
        baseline=baseline,
        expected=expected,
    )


def cells_table(
    groups: PredictionGroups,
    shifts,
    *,
    capability_interventions: Iterable[str] = DEFAULT_CAPABILITY_INTERVENTIONS,
    baseline: str = BASELINE,
    expected: Iterable[tuple[str, str]] = (),
) -> pa.Table:
    """`compute_cells` of prediction groups that are already indexed (shared with others)."""
    options = cell_options(groups, capability_interventions, baseline)
    rows = [
        _cell(groups, model, intervention, shift, index, options)
        for model, intervention in sorted(groups.pairs() | set(expected))
        for index, shift in indexed_shifts(shifts)
    ]
    return pa.Table.from_pylist(rows, schema=CELL_SCHEMA)


def parse_missing(missing: str | None) -> dict[str, list[str]]:
    """`missing` text of a cell -> {input: [prediction paths]}."""
    parsed: dict[str, list[str]] = {}
    for entry in (missing or "").split("; "):
        if entry:
            name, path = entry.split(": ", 1)
            parsed.setdefault(name, []).append(path)
    return parsed


def require_complete(cell: dict) -> dict:
    """Return `cell` (a row of `cells`) or raise IncompleteCellError naming the missing jobs."""
    if not cell["complete"]:
        name = f"({cell['model']}, {cell['intervention']}, {cell['shift_id']})"
        raise IncompleteCellError(name, parse_missing(cell["missing"]))
    return cell


def load_cell(database, model: str, intervention: str, shift_id: str, *, complete=True) -> dict:
    """Read one cell from results.duckdb (path, read-only); with `complete`, demand all inputs."""
    con = connect(database)
    try:
        cursor = con.execute(
            "SELECT * FROM cells WHERE model = ? AND intervention = ? AND shift_id = ?",
            [model, intervention, shift_id],
        )
        names = [d[0] for d in cursor.description]
        found = cursor.fetchall()
    finally:
        con.close()
    if not found:
        raise GeniesError(
            f"no cell ({model}, {intervention}, {shift_id}) in {database}: the model, the "
            "intervention or the shift is not in the configured run (or it has no predictions)"
        )
    cell = dict(zip(names, found[0], strict=True))
    return require_complete(cell) if complete else cell


def write_cell(
    prediction_files,
    data_files,
    test_examples,
    shifts_file,
    out_path,
    model,
    intervention,
    shift_id,
    **options,
) -> dict:
    """Compute one cell from its own prediction files and write it as JSON (a single-cell target).

    `prediction_files` (`genies.results.verify.PredictionFile`) are checked against the test
    splits among `data_files` (their first `test_examples` examples) first. Raises
    IncompleteCellError naming the jobs to run when an input is missing.
    """
    shifts = pq.read_table(shifts_file)
    wanted = shifts.filter(pc.equal(shifts.column("shift_id"), shift_id))
    if not wanted.num_rows:
        raise GeniesError(f"shift {shift_id!r} is not in {shifts_file}")
    predictions = read_checked(prediction_files, data_files, test_examples)
    table = compute_cells(predictions, wanted, expected=[(model, intervention)], **options)
    rows = [
        r for r in table.to_pylist() if (r["model"], r["intervention"]) == (model, intervention)
    ]
    cell = require_complete(rows[0])
    write_json(cell, out_path)
    return cell
