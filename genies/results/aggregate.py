"""Build results.duckdb from the files under results/.

Everything in the database is derived from Parquet files (data, forward scores, predictions)
and the provenance stored in their metadata, so deleting the database loses nothing. The
database is built in a temporary file and renamed into place: a reader never sees a
half-written one. The workflow builds its own file, `results/database/results.duckdb`, and
publishes a copy as `results/results.duckdb` for users (`genies.results.database`); the
predictions it is built from are checked against their evaluation splits first
(`genies.results.verify`).

Tables: shifts (the registry, `genies.data.shifts.shifts_table`), datasets, runs (one per result
file, with the `models` it derives from: `genies.io.RunRecord`), models (one row per prepared model
and Hub commit those runs name), predictions (per pair), cells (per model x intervention x
configured shift, `genies.results.cells.CELL_SCHEMA`), intervals and comparisons (the paired prompt
bootstrap, `genies.results.significance`). With the config key `published`, the paper's runs too
(`genies.results.published`): predictions and cells of the models `<model>@published` (cells over
every registered shift with a published run; no bootstrap intervals or comparisons), and the tables
published_runs (one row per imported upstream file) and published_capabilities. Views:

- `genies_table`: paper Table 5, one row per (model, intervention), each column over its own
  set of shifts as the paper defines it: avg DE, capable DE, both RMS calibration errors, ID
  target accuracy, generalisation accuracy and elicitation over the GENIES shifts; extreme and
  probing avg DE over every shift of extreme/all.json and probing/all.json. Each average is over
  the cells of its set where that number exists, and a count column beside it says how many
  (`genies_shifts` for avg DE, `capable_shifts`, `rms_shifts`, `rms_genies_shifts`,
  `id_target_shifts`, `generalization_shifts`, `elicitation_shifts`, `extreme_shifts`,
  `probing_shifts`); the set sizes are `genies_set_size`, `extreme_set_size`,
  `probing_set_size` (15, 37, 19 with the released data). A count below its set size means a
  partial mean, not the paper's column.
  `<average>_low` / `_high` are the 95% paired prompt-bootstrap intervals of the three DE
  averages; `avg_differential_elicitation_se` is the standard error of avg DE over the GENIES
  shifts (sample standard deviation / sqrt(n)), the spread that sampling other shifts would
  add. `shifts` / `complete_shifts` count all the (model, intervention)'s cells.
- `comparisons` (table): every ordered pair of interventions of a model, the difference of
  their avg DE over the GENIES shifts both cover, its paired interval and the share of draws
  in which the first is ahead.
- `shift_matrix`: paper B.6 in long format, one row per (model, shift, intervention) with its
  DE. Long, because a view's columns are fixed when it is created while interventions come and
  go with the prediction files; `genies.results.report.shift_matrix_wide` pivots it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from genies.data.materialise import split_of
from genies.data.shifts import configured_rows
from genies.io import atomic_path, read_provenance
from genies.results.cells import DEFAULT_CAPABILITY_INTERVENTIONS, PredictionGroups, cells_table
from genies.results.database import wal_of
from genies.results.published import add_published
from genies.results.significance import prompt_bootstrap

log = logging.getLogger(__name__)

RUN_FIELDS = (
    "job",
    "model",
    "intervention",
    "train",
    "eval",
    "dataset",
    "split",
    "stimulus",
    "device",
    "dtype",
    "seconds",
    "started_at",
    "host",
    "git_commit",
)

VIEWS = {
    "zero_shot_accuracy": """
        CREATE VIEW zero_shot_accuracy AS
        SELECT model, eval AS dataset, avg(correct::DOUBLE) AS accuracy,
               count(*) AS pairs, count(DISTINCT example_id) AS examples
        FROM predictions WHERE intervention = 'zero_shot'
        GROUP BY model, eval ORDER BY model, dataset
    """,
    "genies_table": """
        CREATE VIEW genies_table AS
        WITH flagged AS (
            SELECT c.*, coalesce(s.in_genies, false) AS g,
                   coalesce(s.in_extreme_set, false) AS x,
                   coalesce(s.in_probing_set, false) AS p
            FROM cells c LEFT JOIN shifts s USING (shift_id)
        ), averages AS (
            SELECT model, intervention,
                avg(differential_elicitation) FILTER (WHERE g) AS avg_differential_elicitation,
                count(differential_elicitation) FILTER (WHERE g) AS genies_shifts,
                stddev_samp(differential_elicitation) FILTER (WHERE g)
                    / sqrt(count(differential_elicitation) FILTER (WHERE g))
                    AS avg_differential_elicitation_se,
                avg(capable_differential_elicitation) FILTER (WHERE g)
                    AS capable_differential_elicitation,
                count(capable_differential_elicitation) FILTER (WHERE g) AS capable_shifts,
                avg(rms_calibration_error) FILTER (WHERE g) AS avg_rms_calibration_error,
                count(rms_calibration_error) FILTER (WHERE g) AS rms_shifts,
                avg(rms_calibration_error_genies) FILTER (WHERE g)
                    AS avg_rms_calibration_error_genies,
                count(rms_calibration_error_genies) FILTER (WHERE g) AS rms_genies_shifts,
                avg(id_target_accuracy) FILTER (WHERE g) AS avg_id_target_accuracy,
                count(id_target_accuracy) FILTER (WHERE g) AS id_target_shifts,
                avg(differential_elicitation) FILTER (WHERE x)
                    AS extreme_avg_differential_elicitation,
                count(differential_elicitation) FILTER (WHERE x) AS extreme_shifts,
                avg(differential_elicitation) FILTER (WHERE p)
                    AS probing_avg_differential_elicitation,
                count(differential_elicitation) FILTER (WHERE p) AS probing_shifts,
                avg(generalization_accuracy) FILTER (WHERE g) AS avg_generalization_accuracy,
                count(generalization_accuracy) FILTER (WHERE g) AS generalization_shifts,
                avg(elicitation) FILTER (WHERE g) AS avg_elicitation,
                count(elicitation) FILTER (WHERE g) AS elicitation_shifts,
                count(*) AS shifts,
                count(*) FILTER (WHERE complete) AS complete_shifts
            FROM flagged GROUP BY model, intervention
        ), set_sizes AS (
            SELECT count(*) FILTER (WHERE in_genies) AS genies_set_size,
                   count(*) FILTER (WHERE in_extreme_set) AS extreme_set_size,
                   count(*) FILTER (WHERE in_probing_set) AS probing_set_size
            FROM shifts
        )
        SELECT model, intervention,
               avg_differential_elicitation, avg_differential_elicitation_low,
               avg_differential_elicitation_high, genies_shifts, genies_set_size,
               avg_differential_elicitation_se,
               capable_differential_elicitation, capable_shifts,
               avg_rms_calibration_error, rms_shifts,
               avg_rms_calibration_error_genies, rms_genies_shifts,
               avg_id_target_accuracy, id_target_shifts,
               extreme_avg_differential_elicitation, extreme_avg_differential_elicitation_low,
               extreme_avg_differential_elicitation_high, extreme_shifts, extreme_set_size,
               probing_avg_differential_elicitation, probing_avg_differential_elicitation_low,
               probing_avg_differential_elicitation_high, probing_shifts, probing_set_size,
               avg_generalization_accuracy, generalization_shifts,
               avg_elicitation, elicitation_shifts,
               shifts, complete_shifts
        FROM averages a CROSS JOIN set_sizes z
        LEFT JOIN intervals i USING (model, intervention)
        ORDER BY model, intervention
    """,
    "shift_matrix": """
        CREATE VIEW shift_matrix AS
        SELECT model, shift_index, shift_id, source, target, label, intervention,
               differential_elicitation, generalization_accuracy, baseline_accuracy
        FROM cells ORDER BY model, shift_index, intervention
    """,
}


def datasets_table(data_files) -> pa.Table:
    rows = []
    for path in data_files:
        prov = read_provenance(path)
        dataset, split = split_of(path)
        table = pq.read_table(path, columns=["n_responses"])
        k = table.column("n_responses").to_numpy()
        rows.append(
            {
                "dataset": dataset,
                "split": split,
                "examples": table.num_rows,
                "responses_per_example": int(k[0]) if len(k) else None,
                "pairs": int((k - 1).sum()),
                "warnings": prov.get("warnings", []),
                "origin": prov.get("origin"),
                "location": prov.get("location"),
                "commit": prov.get("commit"),
                "files": prov.get("files", []),
                "dropped_rows": prov.get("dropped_rows", 0),
            }
        )
    schema = pa.schema(
        [
            ("dataset", pa.string()),
            ("split", pa.string()),
            ("examples", pa.int64()),
            ("responses_per_example", pa.int64()),
            ("pairs", pa.int64()),
            ("warnings", pa.list_(pa.string())),
            # Where the split came from (genies, files or hub): the GENIES data, the user's
            # files with their sha256, or a Hub dataset and the commit its revision pinned.
            ("origin", pa.string()),
            ("location", pa.string()),
            ("commit", pa.string()),
            ("files", pa.list_(pa.struct([("path", pa.string()), ("sha256", pa.string())]))),
            ("dropped_rows", pa.int64()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def runs_table(files) -> pa.Table:
    rows = []
    for path in files:
        prov = read_provenance(path)
        row = {k: prov.get(k) for k in RUN_FIELDS}
        row["seconds"] = float(row["seconds"]) if row["seconds"] is not None else None
        for k in ("model", "intervention", "train", "eval", "dataset", "split", "stimulus"):
            row[k] = None if row[k] is None else str(row[k])
        row["path"] = str(path)
        row["params"] = json.dumps(prov.get("params", {}), sort_keys=True)
        row["packages"] = json.dumps(prov.get("packages", {}), sort_keys=True)
        row["models"] = json.dumps(prov.get("models", {}), sort_keys=True)
        rows.append(row)
    schema = pa.schema(
        [(k, pa.float64() if k == "seconds" else pa.string()) for k in RUN_FIELDS]
        + [(k, pa.string()) for k in ("path", "params", "packages", "models")]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def models_table(runs: pa.Table) -> pa.Table:
    """One row per prepared model the runs derive from: registry name, source, Hub repository,
    configured revision and resolved commit (None where they do not apply), and how many runs
    name it. Two rows for one name mean runs from two preparations of it (a moved branch)."""
    counts: dict[str, int] = {}
    for text in runs.column("models").to_pylist():
        for name, where in json.loads(text).items():
            key = json.dumps({"model": name, **where}, sort_keys=True)
            counts[key] = counts.get(key, 0) + 1
    rows = []
    for key, n in sorted(counts.items()):
        where = json.loads(key)
        row = {k: where.get(k) for k in ("model", "source", "repo", "revision", "commit")}
        rows.append({**row, "runs": n, "provenance": key})
    schema = pa.schema(
        [(k, pa.string()) for k in ("model", "source", "repo", "revision", "commit")]
        + [("runs", pa.int64()), ("provenance", pa.string())]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def build_database(
    out_path,
    *,
    shifts_file,
    data_files,
    predictions: pa.Table,
    run_files=(),
    extra_tables=None,
    capability_interventions=DEFAULT_CAPABILITY_INTERVENTIONS,
    seed=0,
    published_files=(),
) -> dict:
    """Write the DuckDB database atomically from result files.

    `predictions`: the rows of the prediction files, as `genies.results.verify.read_checked`
    returns them once they hold exactly their splits' pairs (the workflow reads them through
    it only). `run_files`: the files whose provenance makes the `runs` table (forward scores,
    predictions; the data files are added). `capability_interventions` and `seed` (of the
    bootstrap intervals) configure the cells (`genies.results.cells.compute_cells`, one per
    configured shift of the registry `shifts_file`) and the paired prompt bootstrap
    (`genies.results.significance`). `published_files`: the Parquet files of
    `genies.results.published.import_published` (the paper's runs, as `<model>@published`), or
    none.
    Returns the row counts and seconds of each step.
    """
    seconds = {}
    clock = time.perf_counter()

    def lap(step):
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 3)
        clock = now

    tables = {"shifts": pq.read_table(shifts_file), "datasets": datasets_table(data_files)}
    tables["predictions"] = predictions
    tables["runs"] = runs_table([*data_files, *run_files])
    tables["models"] = models_table(tables["runs"])
    lap("runs")
    groups = PredictionGroups(tables["predictions"], seed=seed)
    configured = configured_rows(tables["shifts"])
    options = {"capability_interventions": capability_interventions}
    tables["cells"] = cells_table(groups, configured, **options)
    lap("cells")
    tables["intervals"], tables["comparisons"] = prompt_bootstrap(
        groups, configured, seed=seed, **options
    )
    lap("significance")
    if published_files:
        add_published(tables, published_files, seed=seed)
        lap("published")
    tables.update(extra_tables or {})
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            for name, table in tables.items():
                con.register("incoming", table)
                # Table names come from this module, never from user input.
                con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM incoming')
                con.unregister("incoming")
            for sql in VIEWS.values():
                con.execute(sql)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        # Neither the new file's own log (it was checkpointed) nor the one a read-write
        # connection to the file it replaces left behind, which would not match it.
        for wal in (wal_of(tmp), wal_of(out_path)):
            if wal.exists():
                os.remove(wal)
    lap("write_database")
    stats = {
        "prediction_rows": tables["predictions"].num_rows,
        "cells": tables["cells"].num_rows,
        "seconds": seconds,
    }
    log.info("wrote %s: %s", out_path, stats)
    return stats
