"""Build results.duckdb from the files under results/.

Everything in the database is derived from Parquet files (data, forward scores, predictions)
and the provenance stored in their metadata, so deleting the database loses nothing. The
database is built in a temporary file and renamed into place: a reader never sees a
half-written one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from .io import atomic_path, read_provenance
from .predictions import PREDICTION_SCHEMA

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


def _predictions(files) -> pa.Table:
    if not files:
        return PREDICTION_SCHEMA.empty_table()
    return pads.dataset(
        [str(f) for f in files], format="parquet", schema=PREDICTION_SCHEMA
    ).to_table()


def build_database(
    out_path, *, shifts_file, data_files, prediction_files, run_files=(), extra_tables=None
) -> None:
    """Write the DuckDB database atomically from result files."""
    tables = {
        "shifts": pq.read_table(shifts_file),
        "datasets": datasets_table(data_files),
        "predictions": _predictions(prediction_files),
        "runs": runs_table([*data_files, *run_files, *prediction_files]),
        **(extra_tables or {}),
    }
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
    log.info("wrote %s (%d prediction rows)", out_path, tables["predictions"].num_rows)
