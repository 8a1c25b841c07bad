"""The GENIES paper's published runs, imported as predictions of `<model>@published`.

The published results are upstream's `results/` folder (Joshuaclymer/GENIES). Its
`evaluations/<folder>/<run>/<eval>.json` files hold one evaluation run each: `<run>` is
`<model>-<train dataset>` (or `<model>` for the untouched base model), `eval_probabilities` the
probability of the preferred response of every evaluated pair, in the order upstream expanded
the eval dataset's test split (examples in file order, then the dispreferred responses in
order: the order of `genies.data.predictions.expand_pairs`).
`target_tuned_capability/<model>/<target>.json` holds the capability the published tables
divided by.

What is imported, and how (`import_published` writes three Parquet files, `add_published`
puts them into results.duckdb):

- Runs of the paper's models (MODELS) whose train and eval datasets exist in the data, from the
  folders in INTERVENTIONS, renamed to this workflow's interventions. Left out: the folders in
  LEFT_OUT, nested folders (`lat_stim_1/lat/`, `lora_fine_tuning/old_evals/`, ...: older copies),
  data-mixing runs (`llama-30b-alpaca_mmlu-wrong_arc-35%`: their train is no dataset), runs on
  unreleased datasets, and smoke-test models (pythia-*, gpt-tiny). The import log lists them.
- `correct` follows upstream's rule so that every run's accuracy is the accuracy it stored:
  upstream evaluated the TRAINER_BASED methods with the HF Trainer, the preferred response
  first, and took the first index of equal probabilities, so an exact tie (p = 0.5) counts as
  correct there; the probe methods shuffled the pair, and their files hold no exact ties.
- Pairs are matched to this workflow's `(example_id, pair_index)` when the run has as many pairs
  as the test split. A probe run with fewer pairs was cut to its first pairs (upstream's
  `max_examples`) and is matched on those. A Trainer-based run with fewer pairs dropped long
  examples before pairing (all such published runs are few-shot runs, whose prompts depended
  on unseeded demonstrations), so its pairs carry a NULL `example_id` and NULL response indices;
  `pair_index` still counts the pairs of an example (0 starts the next one), which is how the
  cells' bootstrap groups them.
- CCS runs stored only an accuracy (a per-text accuracy, max(acc, 1 - acc)): they have no
  prediction rows, only a `published_runs` row, and their cells use that accuracy.

Cells of the published models (`published_cells`) are computed by
`genies.results.cells.compute_cells` like the user's, over every registered shift with a
published run, with two inputs the published tables used: the baseline is the zero-shot run
stored under the *source* (upstream evaluated zero-shot once per source directory, and the
published DE subtracts that run's accuracy), and the capability is the
`target_tuned_capability/` value (the best of upstream's interventions on the target
reference; no published code computes it).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genies.data.materialise import load_split
from genies.data.raw import RawData
from genies.errors import ConfigError, DataError
from genies.io import RunRecord, write_parquet
from genies.pipeline.plan import NO_TRAIN
from genies.progress import ProgressLog

# genies.results.cells, genies.data.predictions (pyarrow.dataset, pandas: half a second),
# pyarrow.compute and duckdb are imported where they are used: the Snakefile reads this module
# (configured_folder, OUTPUTS).

log = logging.getLogger(__name__)

SUFFIX = "@published"
#: The models of the published runs (the paper's); other folders are smoke tests.
MODELS = ("llama-7b", "llama-13b", "llama-30b", "openllama-3b")
#: Upstream folder under evaluations/ -> this workflow's intervention.
INTERVENTIONS = {
    "zero_shot": "zero_shot",
    "few_shot": "few_shot",
    "lora_fine_tuning": "lora",  # where the published LoRA runs live
    "lora_fine_tune": "lora",  # the code's own folder name; holds only pythia smoke tests
    "prompt_tuning": "prompt_tuning",
    "mms": "mms",
    "lat_stim_1": "lat1",
    "lat_stim_2": "lat2",
    "cra": "cra",
    "ccs": "ccs",
}
#: Upstream folders under evaluations/ that are not imported, and why.
LEFT_OUT = {
    "log_probs_4bit": "an earlier zero-shot scoring run on 41 datasets that no published "
    "table uses; zero_shot/ holds the zero-shot runs behind the tables",
    "human_eval": "answers typed by a person for one random (unseeded) pair per example, "
    "which cannot be matched to pairs; no model, no shifts",
}
#: `best_intervention` names of target_tuned_capability/ -> this workflow's intervention.
CAPABILITY_NAMES = {**INTERVENTIONS, "classify_lora": "lora"}
#: Interventions upstream evaluated with the HF Trainer: the preferred response at index 0 and
#: argmax taking the first of equal values (an exact tie counts as correct), after dropping
#: examples longer than the context.
TRAINER_BASED = frozenset({"zero_shot", "few_shot", "lora", "prompt_tuning"})
#: Our intervention -> the upstream folder its published runs are in.
UPSTREAM_FOLDERS = {
    ours: folder for folder, ours in INTERVENTIONS.items() if folder != "lora_fine_tune"
}

OUTPUTS = {
    "predictions": "results/published/predictions.parquet",
    "runs": "results/published/runs.parquet",
    "capabilities": "results/published/capabilities.parquet",
}

RUN_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("intervention", pa.string()),
        ("train", pa.string()),
        ("eval", pa.string()),
        ("upstream", pa.string()),  # the file, relative to the published results/ folder
        ("pairs", pa.int64()),  # 0: the run stored an accuracy only (CCS)
        ("test_pairs", pa.int64()),  # pairs of the eval dataset's test split
        ("matched", pa.string()),  # all | first (the run's first pairs) | none
        ("stored_accuracy", pa.float64()),  # eval_accuracy
        ("accuracy", pa.float64()),  # of the imported `correct` (NULL without pairs)
        ("stored_rms_calibration_error", pa.float64()),  # eval_rms_calibration_error
        ("timestamp", pa.string()),
    ]
)
CAPABILITY_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("target", pa.string()),
        ("target_reference", pa.string()),
        ("capability", pa.float64()),
        ("capability_intervention", pa.string()),
        ("upstream_intervention", pa.string()),
    ]
)


def published_model(model: str) -> str:
    return model + SUFFIX


def configured_folder(value) -> Path | None:
    """The published `results/` folder named by the config key `published`, or None.

    A folder that does not exist is a warning, not an error: the published runs are an optional
    comparison, and a fresh clone has no ../shared. A folder without `evaluations/` is an error.
    """
    if value is None:
        return None
    folder = Path(value)
    if not folder.exists():
        log.warning(
            "published results not found at %s: no <model>@published rows will be built. "
            "They are upstream's results/ folder (git clone "
            "https://github.com/Joshuaclymer/GENIES); set `published:` to its path, or to "
            "null to silence this warning",
            folder,
        )
        return None
    for name in ("evaluations", "target_tuned_capability"):
        if not (folder / name).is_dir():
            raise ConfigError(
                f"published: {folder} has no {name}/ folder; point `published` at the "
                "results/ folder of the GENIES repository (or set it to null)"
            )
    return folder


def parse_run(rel: Path, datasets) -> tuple[str, str, str, str] | str:
    """(model, intervention, train, eval) of `evaluations/<folder>/<run>/<eval>.json`
    (`rel` relative to evaluations/), or the reason it is not imported."""
    if len(rel.parts) != 3:
        return "nested folder (older copies)"
    folder, run, eval_dataset = rel.parts[0], rel.parts[1], rel.stem
    if folder in LEFT_OUT:
        return f"{folder}: {LEFT_OUT[folder]}"
    if folder not in INTERVENTIONS:
        return f"unknown folder {folder}"
    # Longest first, so that no model name is taken for the prefix of another.
    model = next(
        (m for m in sorted(MODELS, key=len, reverse=True) if run == m or run.startswith(m + "-")),
        None,
    )
    if model is None:
        return "not one of the paper's models (smoke test)"
    train = run[len(model) + 1 :] or NO_TRAIN
    if train != NO_TRAIN and train not in datasets:
        return "train is not a dataset (data-mixing run or unreleased dataset)"
    if eval_dataset not in datasets:
        return "eval is not a released dataset"
    return model, INTERVENTIONS[folder], train, eval_dataset


def correct_pairs(intervention: str, probabilities: np.ndarray) -> np.ndarray:
    """Upstream's `correct`: p > 0.5, or p >= 0.5 for the TRAINER_BASED methods."""
    if intervention in TRAINER_BASED:
        return probabilities >= 0.5
    return probabilities > 0.5


def _probabilities(run: dict, where: str) -> np.ndarray | None:
    values = run.get("eval_probabilities")
    if values is None:
        return None
    try:
        p = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(where, "not a list of numbers", field="eval_probabilities") from None
    if p.ndim != 1 or not len(p) or not np.all(np.isfinite(p) & (p >= 0) & (p <= 1)):
        raise DataError(where, "must be a list of probabilities", field="eval_probabilities")
    return p


def _number(run: dict, key: str, where: str, required=True) -> float | None:
    value = run.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise DataError(where, f"expected a number, found {value!r}", field=key)
    return float(value)


def _pair_rows(key, p, intervention, pairs: dict, where: str):
    """The prediction columns of one run and how its pairs were matched to the data."""
    from genies.data.predictions import PREDICTION_SCHEMA

    n, total = len(p), len(pairs["example_id"])
    if n == total or (n < total and intervention not in TRAINER_BASED):
        matched = "all" if n == total else "first"
        ids = pairs["example_id"][:n]
        pair_index = pairs["pair_index"][:n]
        preferred = pairs["preferred_response"][:n]
        dispreferred = pairs["dispreferred_response"][:n]
    else:
        matched = "none"
        per_example = np.bincount(pairs["example_row"]).max() if total else 0
        if n > total:
            log.warning("%s: %d pairs but the test split has %d; not matched", where, n, total)
        ids = [None] * n
        # Few-shot dropped whole examples: every retained example still has all its pairs.
        whole = n < total and per_example and n % per_example == 0
        pair_index = np.arange(n) % per_example if whole else [None] * n
        preferred = dispreferred = [None] * n
    model, intervention, train, eval_dataset = key
    table = pa.table(
        {
            "model": pa.array([model] * n, pa.string()),
            "intervention": pa.array([intervention] * n, pa.string()),
            "train": pa.array([train] * n, pa.string()),
            "eval": pa.array([eval_dataset] * n, pa.string()),
            "example_id": pa.array(ids, pa.string()),
            "pair_index": pa.array(pair_index, pa.int16()),
            "preferred_response": pa.array(preferred, pa.int8()),
            "dispreferred_response": pa.array(dispreferred, pa.int8()),
            "prob_preferred": p,
            "correct": correct_pairs(intervention, p),
            "prompt_tokens_cut": pa.array(np.zeros(n, np.int32)),
            "skipped": pa.array(np.zeros(n, bool)),
        },
        schema=PREDICTION_SCHEMA,
    )
    return table, matched


def import_published(folder, data_location, out_paths=None) -> dict:
    """Convert a published `results/` folder into the Parquet files of OUTPUTS.

    `data_location` is the GENIES data (`data_dir`): the pairs are matched to its test splits.
    Returns counts of what was imported and skipped.
    """
    from genies.data.predictions import PREDICTION_SCHEMA, expand_pairs

    folder = Path(folder)
    out_paths = {**OUTPUTS, **(out_paths or {})}
    record = RunRecord("import_published", source=str(folder))
    raw = RawData(data_location)
    datasets = set(raw.datasets())
    files = sorted((folder / "evaluations").glob("**/*.json"))
    pairs_of: dict[str, dict] = {}
    tables, runs, skipped = [], [], Counter()
    progress = ProgressLog("import_published", unit="files")
    for done, path in enumerate(files, 1):
        progress(done, len(files))
        rel = path.relative_to(folder / "evaluations")
        key = parse_run(rel, datasets)
        if isinstance(key, str):
            skipped[key] += 1
            continue
        model, intervention, train, eval_dataset = key
        where = str(path)
        try:
            run = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(where, f"malformed JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(run, dict):
            raise DataError(where, "expected a JSON object")
        if eval_dataset not in pairs_of:
            examples = load_split(raw, eval_dataset, "test")
            pairs_of[eval_dataset] = expand_pairs(examples)
        pairs = pairs_of[eval_dataset]
        p = _probabilities(run, where)
        stored = _number(run, "eval_accuracy", where)
        row = {
            "model": published_model(model),
            "intervention": intervention,
            "train": train,
            "eval": eval_dataset,
            "upstream": f"evaluations/{rel.as_posix()}",
            "pairs": 0,
            "test_pairs": len(pairs["example_id"]),
            "matched": "none",
            "stored_accuracy": stored,
            "accuracy": None,
            "stored_rms_calibration_error": _number(
                run, "eval_rms_calibration_error", where, required=False
            ),
            "timestamp": run.get("timestamp"),
        }
        if p is not None:
            table, row["matched"] = _pair_rows(
                (row["model"], intervention, train, eval_dataset), p, intervention, pairs, where
            )
            tables.append(table)
            row["pairs"] = len(p)
            row["accuracy"] = float(np.mean(table.column("correct").to_numpy()))
            if row["accuracy"] != stored:
                log.warning(
                    "%s: stored eval_accuracy %r, but its probabilities give %r",
                    where,
                    stored,
                    row["accuracy"],
                )
        runs.append(row)
    for reason, count in sorted(skipped.items()):
        log.info("left out %d files: %s", count, reason)
    predictions = (
        pa.concat_tables(tables).combine_chunks() if tables else PREDICTION_SCHEMA.empty_table()
    )
    capabilities = read_capabilities(folder, datasets)
    stats = {
        "runs": len(runs),
        "prediction_rows": predictions.num_rows,
        "capabilities": capabilities.num_rows,
        "left_out": sum(skipped.values()),
    }
    provenance = record.finish(**stats)
    write_parquet(predictions, out_paths["predictions"], provenance)
    write_parquet(pa.Table.from_pylist(runs, schema=RUN_SCHEMA), out_paths["runs"], provenance)
    write_parquet(capabilities, out_paths["capabilities"], provenance)
    log.info("imported %s", stats)
    return stats


def read_capabilities(folder, datasets) -> pa.Table:
    """The capabilities (`target_tuned_capability/<model>/<target>.json`) of the paper's models
    on released targets."""
    rows = []
    for model in MODELS:
        for path in sorted((Path(folder) / "target_tuned_capability" / model).glob("*.json")):
            where = str(path)
            entry = json.loads(path.read_text())
            target = entry.get("target", path.stem)
            if target not in datasets:
                continue
            name = entry.get("best_intervention")
            rows.append(
                {
                    "model": published_model(model),
                    "target": target,
                    "target_reference": entry.get("target_reference", target),
                    "capability": _number(entry, "best_intervention_accuracy", where),
                    "capability_intervention": CAPABILITY_NAMES.get(name, name),
                    "upstream_intervention": name,
                }
            )
    return pa.Table.from_pylist(rows, schema=CAPABILITY_SCHEMA)


def read_imported(paths) -> dict[str, pa.Table]:
    """The tables `import_published` wrote (paths: a dict like OUTPUTS, or the three files),
    once their predictions are what their runs table says (`check_imported`)."""
    from genies.data.predictions import read_predictions

    if not isinstance(paths, dict):
        paths = {Path(p).stem: p for p in paths}
    tables = {name: pq.read_table(paths[name]) for name in OUTPUTS if name != "predictions"}
    # Through read_predictions: a file written before a column was added gets its default.
    imported = {"predictions": read_predictions([paths["predictions"]]), **tables}
    check_imported(imported, paths["predictions"])
    return imported


_RUN_CHECK = """
    WITH found AS (
        SELECT model, intervention, train, eval, count(*) AS rows_,
               count(example_id) AS with_id,
               count(DISTINCT (example_id, pair_index)) FILTER (WHERE example_id IS NOT NULL)
                   AS distinct_pairs,
               count(*) FILTER (WHERE example_id NOT LIKE eval || '/test/%') AS foreign_ids,
               count(*) FILTER (WHERE prob_preferred IS NULL OR isnan(prob_preferred)
                   OR prob_preferred < 0 OR prob_preferred > 1 OR correct IS NULL) AS bad_prob
        FROM predictions GROUP BY ALL
    )
    SELECT coalesce(r.upstream, format('({}, {}, {}, {})', f.model, f.intervention, f.train,
                    f.eval)) AS run,
           r.pairs, r.test_pairs, r.matched, coalesce(f.rows_, 0), f.with_id, f.distinct_pairs,
           f.foreign_ids, f.bad_prob
    FROM runs r FULL JOIN found f USING (model, intervention, train, eval)
    ORDER BY run
"""


def check_imported(imported: dict[str, pa.Table], path) -> None:
    """Check the published predictions against what `import_published` recorded of each run.

    They cannot be checked against this run's test splits: the import matched them to the
    whole raw test split of every released dataset (`import_published`), while the aggregation
    reads only the configured datasets, capped. So each run's rows must be as many as its
    `pairs`, no (example_id, pair_index) twice, ids of its own eval dataset when it was matched
    (`all`: as many pairs as the split, `first`: fewer) and none when it was not, and
    probabilities in [0, 1]; a run stored without pairs (CCS) has no rows, and no rows lack a
    run. Raises genies.results.verify.PredictionFileError naming the file and the runs.
    """
    import duckdb

    from genies.results.verify import PredictionFileError

    con = duckdb.connect()
    try:
        con.register("predictions", imported["predictions"])
        con.register("runs", imported["runs"])
        found = con.execute(_RUN_CHECK).fetchall()
    finally:
        con.close()
    problems = []
    for run, pairs, test_pairs, matched, rows, with_id, distinct, foreign, bad_prob in found:
        wrong = []
        if pairs is None:
            wrong.append("no run in runs.parquet lists them")
        elif rows != pairs:
            wrong.append(f"its run has {pairs} pairs")
        if with_id is not None and distinct != with_id:
            wrong.append(f"{with_id - distinct} (example_id, pair_index) twice")
        if matched in ("all", "first"):
            if (pairs == test_pairs) != (matched == "all") or pairs > test_pairs:
                wrong.append(f"matched '{matched}' with {pairs} of the split's {test_pairs} pairs")
            if rows and (with_id != rows or foreign):
                wrong.append("ids missing or of another dataset")
        elif with_id:
            wrong.append(f"{with_id} ids although its pairs were not matched")
        if bad_prob:
            wrong.append(f"{bad_prob} probabilities not in [0, 1]")
        if wrong:
            problems.append(f"{run}: {rows} rows; " + "; ".join(wrong))
    if problems:
        raise PredictionFileError(
            {str(path): ("import_published", problems)}, "do not match the published runs"
        )


def published_cells(imported: dict[str, pa.Table], shifts, *, seed=0, n_resamples=1000):
    """Cells (genies.results.cells.CELL_SCHEMA) of the published models.

    Over the shifts of `shifts` (the registry table, whose order gives `shift_index`) that have
    a published run from source to target.
    """
    import pyarrow.compute as pc

    from genies.results.cells import PredictionGroups, cells_table

    runs = imported["runs"]
    summaries = runs.filter(pc.equal(runs.column("pairs"), 0)).select(
        ["model", "intervention", "train", "eval", "stored_accuracy"]
    )
    groups = PredictionGroups(
        imported["predictions"],
        seed=seed,
        n_resamples=n_resamples,
        summaries=summaries.rename_columns(["model", "intervention", "train", "eval", "accuracy"]),
        capabilities=imported["capabilities"],
    )
    published_shifts = {
        f"{train}__{eval_dataset}"
        for train, eval_dataset in zip(
            runs.column("train").to_pylist(), runs.column("eval").to_pylist(), strict=True
        )
    }
    shifts = shifts.filter(pc.is_in(shifts.column("shift_id"), pa.array(sorted(published_shifts))))
    # capability_interventions is unused: every published model takes its capability from the
    # capabilities table.
    cells = cells_table(groups, shifts, capability_interventions=("lora",))
    missing = [_upstream_missing(cell) for cell in cells.select(_MISSING_FIELDS).to_pylist()]
    index = cells.schema.get_field_index("missing")
    return cells.set_column(index, "missing", pa.array(missing, pa.string()))


_MISSING_FIELDS = ["model", "intervention", "source", "target", "missing"]


def _upstream_missing(cell: dict) -> str | None:
    """A published cell's `missing`, naming the upstream files instead of prediction paths."""
    from genies.results.cells import parse_missing

    parsed = parse_missing(cell["missing"])
    if not parsed:
        return None
    model = cell["model"].removesuffix(SUFFIX)
    entries = []
    for name, paths in parsed.items():
        for path in paths:
            if name == "capability":
                entries.append(f"{name}: target_tuned_capability/{model}/{cell['target']}.json")
                continue
            # results/predictions/{model}/{intervention}/{train}/{eval}.parquet
            _, _, _, intervention, train, eval_file = Path(path).parts
            if name == "baseline":
                train = cell["source"]
            run = model if train == NO_TRAIN else f"{model}-{train}"
            folder = UPSTREAM_FOLDERS.get(intervention, intervention)
            entries.append(f"{name}: evaluations/{folder}/{run}/{Path(eval_file).stem}.json")
    return "; ".join(entries) + " (not in the published runs)"


def add_published(tables: dict[str, pa.Table], paths, *, seed=0) -> None:
    """Add the imported published runs to the tables of results.duckdb (in place).

    Appends their predictions and cells (computed over `tables["shifts"]`) and adds the tables
    `published_runs` and `published_capabilities`.
    """
    imported = read_imported(paths)
    cells = published_cells(imported, tables["shifts"], seed=seed)
    tables["cells"] = pa.concat_tables([tables["cells"], cells])
    tables["predictions"] = pa.concat_tables(
        [tables["predictions"], imported["predictions"]]
    ).combine_chunks()
    tables["published_runs"] = imported["runs"]
    tables["published_capabilities"] = imported["capabilities"]
