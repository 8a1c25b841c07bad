"""Build results.duckdb from the files under results/.

Everything in the database is derived from Parquet files (data, forward scores, predictions)
and the provenance stored in their metadata, so deleting the database loses nothing. The
database is built in a temporary file and renamed into place: a reader never sees a
half-written one.

Tables: shifts, datasets, runs, predictions (per pair), cells (per model x intervention x
shift, `genies.cells.CELL_SCHEMA`). Views:

- `genies_table`: paper Table 5, one row per (model, intervention). Each average is over the
  cells where that number exists; `shifts`, `complete_shifts` and `de_shifts` say how many.
  `avg_differential_elicitation_se` is the standard error of the mean DE over shifts
  (sample standard deviation / sqrt(n)); the report's bars show +-1.96 of it.
- `shift_matrix`: paper B.6 in long format, one row per (model, shift, intervention) with its
  DE. Long, because a view's columns are fixed when it is created while interventions come and
  go with the prediction files; `genies.report.shift_matrix_wide` pivots it.
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

from .cells import DEFAULT_CAPABILITY_INTERVENTIONS, compute_cells
from .io import atomic_path, read_provenance
from .predictions import read_predictions

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
        SELECT model, intervention,
               count(*) AS shifts,
               count(*) FILTER (WHERE complete) AS complete_shifts,
               count(differential_elicitation) AS de_shifts,
               avg(differential_elicitation) AS avg_differential_elicitation,
               stddev_samp(differential_elicitation) / sqrt(count(differential_elicitation))
                   AS avg_differential_elicitation_se,
               avg(capable_differential_elicitation) AS capable_differential_elicitation,
               avg(rms_calibration_error) AS avg_rms_calibration_error,
               avg(rms_calibration_error_genies) AS avg_rms_calibration_error_genies,
               avg(id_target_accuracy) AS avg_id_target_accuracy,
               avg(differential_elicitation) FILTER (WHERE label = 'extreme')
                   AS extreme_avg_differential_elicitation,
               avg(differential_elicitation) FILTER (WHERE label = 'probing')
                   AS probing_avg_differential_elicitation,
               avg(generalization_accuracy) AS avg_generalization_accuracy,
               avg(elicitation) AS avg_elicitation
        FROM cells GROUP BY model, intervention ORDER BY model, intervention
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
        table = pq.read_table(path, columns=["n_responses"])
        k = table.column("n_responses").to_numpy()
        rows.append(
            {
                "dataset": prov.get("dataset", Path(path).parent.name),
                "split": prov.get("split", Path(path).stem),
                "examples": table.num_rows,
                "responses_per_example": int(k[0]) if len(k) else None,
                "pairs": int((k - 1).sum()),
                "warnings": prov.get("warnings", []),
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
        rows.append(row)
    schema = pa.schema(
        [(k, pa.float64() if k == "seconds" else pa.string()) for k in RUN_FIELDS]
        + [("path", pa.string()), ("params", pa.string()), ("packages", pa.string())]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def build_database(
    out_path,
    *,
    shifts_file,
    data_files,
    prediction_files,
    run_files=(),
    extra_tables=None,
    capability_interventions=DEFAULT_CAPABILITY_INTERVENTIONS,
    seed=0,
) -> dict:
    """Write the DuckDB database atomically from result files.

    `capability_interventions` and `seed` (of the bootstrap intervals) configure the cells
    (`genies.cells.compute_cells`). Returns the row counts and seconds of each step.
    """
    seconds = {}
    clock = time.perf_counter()

    def lap(step):
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = round(now - clock, 3)
        clock = now

    tables = {"shifts": pq.read_table(shifts_file), "datasets": datasets_table(data_files)}
    tables["predictions"] = read_predictions(prediction_files)
    lap("read_predictions")
    tables["runs"] = runs_table([*data_files, *run_files, *prediction_files])
    lap("runs")
    tables["cells"] = compute_cells(
        tables["predictions"],
        tables["shifts"],
        capability_interventions=capability_interventions,
        seed=seed,
    )
    lap("cells")
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
        wal = Path(f"{tmp}.wal")
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
