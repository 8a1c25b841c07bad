"""Benchmark building results.duckdb (incl. the cells) from ~1 million prediction rows.

Synthesises the prediction files a full run would leave: M models x I interventions (two of
them untrained, train = none) over S shifts among D datasets, with every file a cell needs
(source -> target, source -> source, reference -> reference; the untrained ones once per eval
dataset). Pairs per file are chosen so the total is about --rows. Every shift is put in the
GENIES set (and in the extreme or probing set by its label), so the paired prompt bootstrap
(`genies.results.significance`, 1000 draws) covers all of them: the worst case. Then times
reading the prediction files, plain (`genies.data.predictions.read_predictions`) and checked
against their test splits (`genies.results.verify.read_checked`, what the workflow does), and
`genies.results.aggregate.build_database`, and prints its per-step seconds, the number of cells
and what the bootstrap covered.

    .venv/bin/python bench/bench_aggregate.py [--rows 1000000] [--models 3] [--interventions 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genies.data.predictions import PREDICTION_SCHEMA, read_predictions
from genies.data.shifts import Shift, shifts_table
from genies.io import write_parquet
from genies.results.aggregate import build_database
from genies.results.significance import N_RESAMPLES
from genies.results.verify import PredictionFile, read_checked

UNTRAINED = ("zero_shot", "random")


def synthetic_shifts(n_shifts: int, n_datasets: int, rng) -> list[Shift]:
    names = [f"dataset_{i:02d}" for i in range(n_datasets)]
    shifts, seen = [], set()
    while len(shifts) < n_shifts:
        source, target = rng.choice(names, 2, replace=False)
        if (source, target) in seen:
            continue
        seen.add((source, target))
        # One shift in eight measures its capability on another dataset, as upstream's do.
        reference = rng.choice(names) if rng.random() < 0.125 else target
        label = "extreme" if rng.random() < 0.5 else "probing"
        shifts.append(Shift(str(source), str(target), str(reference), label=label))
    return shifts


def files_needed(shifts, interventions) -> list[tuple[str, str, str]]:
    """(intervention, train, eval) of every prediction file the cells read."""
    trained_pairs, evals = set(), set()
    for s in shifts:
        trained_pairs |= {
            (s.source, s.target),
            (s.source, s.source),
            (s.target_reference, s.target_reference),
        }
        evals |= {s.source, s.target, s.target_reference}
    keys = []
    for intervention in interventions:
        if intervention in UNTRAINED:
            keys += [(intervention, "none", e) for e in sorted(evals)]
        else:
            keys += [(intervention, t, e) for t, e in sorted(trained_pairs)]
    return keys


def prediction_file(model, intervention, train, eval_dataset, n_examples, rng) -> pa.Table:
    pairs_per_example = 2
    n = n_examples * pairs_per_example
    example = np.repeat(np.arange(n_examples), pairs_per_example)
    prob = rng.beta(2.0, 1.5, n)
    return pa.table(
        {
            "model": pa.array([model] * n, pa.string()),
            "intervention": pa.array([intervention] * n, pa.string()),
            "train": pa.array([train] * n, pa.string()),
            "eval": pa.array([eval_dataset] * n, pa.string()),
            "example_id": pa.array([f"{eval_dataset}/test/{i}" for i in example], pa.string()),
            "pair_index": np.tile(np.arange(pairs_per_example, dtype=np.int16), n_examples),
            "preferred_response": np.zeros(n, np.int8),
            "dispreferred_response": np.tile(np.arange(1, 3, dtype=np.int8), n_examples),
            "prob_preferred": prob,
            "correct": prob > 0.5,
            "prompt_tokens_cut": np.zeros(n, np.int32),
            "skipped": np.zeros(n, bool),
        },
        schema=PREDICTION_SCHEMA,
    )


def split_table(eval_dataset, n_examples) -> pa.Table:
    """The columns of a materialised test split that the check and the datasets table read:
    three responses per example, the first preferred (two pairs each)."""
    return pa.table(
        {
            "example_id": pa.array([f"{eval_dataset}/test/{i}" for i in range(n_examples)]),
            "preferred": pa.array(np.zeros(n_examples, np.int8)),
            "dispreferred": pa.array([[1, 2]] * n_examples, pa.list_(pa.int8())),
            "n_responses": pa.array(np.full(n_examples, 3, np.int8)),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--interventions", type=int, default=10)
    ap.add_argument("--shifts", type=int, default=56)
    ap.add_argument("--datasets", type=int, default=45)
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    shifts = synthetic_shifts(args.shifts, args.datasets, rng)
    interventions = [*UNTRAINED, "lora"] + [f"method_{i}" for i in range(args.interventions - 3)]
    keys = files_needed(shifts, interventions)
    n_files = len(keys) * args.models
    n_examples = max(1, round(args.rows / n_files / 2))

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_aggregate_"))
    start = time.perf_counter()
    files, expected = [], []
    for m in range(args.models):
        model = f"model_{m}"
        for intervention, train, eval_dataset in keys:
            # One file per group (the tuned methods' jobs write one per train; same rows).
            path = root / f"results/predictions/{model}/{intervention}/{train}/{eval_dataset}.pq"
            table = prediction_file(model, intervention, train, eval_dataset, n_examples, rng)
            write_parquet(table, path, {"job": "predict", "model": model, "seconds": 1.0})
            files.append(path)
            group = (model, intervention, train, eval_dataset)
            expected.append(PredictionFile(str(path), "predict", (group,)))
    data_files = []
    for eval_dataset in sorted({e for _, _, e in keys}):
        path = root / f"results/data/{eval_dataset}/test.parquet"
        write_parquet(split_table(eval_dataset, n_examples), path, {"split": "test"})
        data_files.append(path)
    shifts_file = root / "results/shifts.parquet"
    sets = {
        "genies": shifts,
        "extreme": [s for s in shifts if s.label == "extreme"],
        "probing": [s for s in shifts if s.label == "probing"],
    }
    pq.write_table(shifts_table(shifts, sets), shifts_file)
    print(
        f"synthesised {len(files)} prediction files ({n_examples * 2} pairs each) "
        f"in {time.perf_counter() - start:.1f} s under {root}"
    )

    start = time.perf_counter()
    read_predictions(files)
    plain = time.perf_counter() - start
    start = time.perf_counter()
    predictions = read_checked(expected, data_files, None)
    checked = time.perf_counter() - start
    print(f"read the prediction files: {plain:.2f} s; read and check them: {checked:.2f} s")
    start = time.perf_counter()
    stats = build_database(
        root / "results/database/results.duckdb",
        shifts_file=shifts_file,
        data_files=data_files,
        predictions=predictions,
        run_files=files,
    )
    total = time.perf_counter() - start
    print(f"prediction rows: {stats['prediction_rows']:,}")
    print(
        f"cells: {stats['cells']:,} ({args.models} models x {len(interventions)} x {len(shifts)})"
    )
    for step, seconds in stats["seconds"].items():
        print(f"  {step:<18} {seconds:7.2f} s")
    print(
        f"significance: paired prompt bootstrap, {N_RESAMPLES} draws, {len(shifts)} shifts x "
        f"{len(interventions)} interventions x {args.models} models, "
        f"{len(interventions) * (len(interventions) - 1) * args.models} comparisons, "
        f"{n_examples} prompts per dataset: {stats['seconds']['significance']:.2f} s"
    )
    print(f"build_database total: {total:.2f} s")


if __name__ == "__main__":
    main()
