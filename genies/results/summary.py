"""One results file per run and model: `results/genies_table/<model>.json`.

Like lm-evaluation-harness's and reward-bench's result JSON, it holds what a reader needs to
quote, compare and reproduce the numbers without the database (README, "Results", documents
every key):

- `table`: the `genies_table` rows of the model (paper Table 5), with the 95% interval of avg
  DE and the number of shifts behind each average; `comparisons`: the paired differences;
  `cells`: every cell with its interval and counts of pairs and examples (skipped, cut);
- `config`: the resolved config of the run (schema defaults filled in);
- `models`: the `genies_model.json` of every prepared model the numbers come from (the run
  model, and the reward models and DPO policies its interventions read), whatever its source
  records there (a Hub model's commit, a local path, a GGUF file);
- `packages`: every version of each tracked package (`genies.io.TRACKED_PACKAGES`) that the
  runs behind the numbers (the `runs` table) and the job writing this file used; one version
  per package unless the results were made under different versions;
- `git_commit` and `written_at` of the job writing it.
"""

from __future__ import annotations

import json
import time

import pandas as pd

from genies.io import git_commit, package_versions, read_model_info, write_json
from genies.results.database import connect

FORMAT = "genies-results/1"


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON objects: missing values as null, floats to 15 significant digits."""
    return json.loads(frame.to_json(orient="records", double_precision=15))


def package_versions_of(runs: pd.DataFrame, models) -> dict[str, list[str]]:
    """Package -> sorted versions used by the runs of `models` (and the model-free ones, the
    data) and by this process."""
    seen: dict[str, set] = {name: set() for name in package_versions()}
    mine = runs[runs["model"].isna() | runs["model"].isin(list(models))]
    for packages in [*(json.loads(p) for p in mine["packages"]), package_versions()]:
        for name, version in packages.items():
            if version is not None:
                seen.setdefault(name, set()).add(version)
    return {name: sorted(versions) for name, versions in sorted(seen.items())}


def run_summary(database, model: str, config: dict, model_dirs: dict) -> dict:
    """The results file of `model` as a dict (`write_summary` writes it)."""
    con = connect(database)
    try:
        # fixed table names, not user input
        frames = {
            name: con.execute(f"SELECT * FROM {name} WHERE model = ?", [model]).df()
            for name in ("genies_table", "comparisons", "cells")
        }
        runs = con.execute("SELECT model, packages FROM runs").df()
    finally:
        con.close()
    return {
        "format": FORMAT,
        "model": model,
        "table": records(frames["genies_table"]),
        "comparisons": records(frames["comparisons"]),
        "cells": records(frames["cells"].sort_values(["shift_index", "intervention"])),
        "config": config,
        "models": {name: read_model_info(folder) for name, folder in model_dirs.items()},
        "packages": package_versions_of(runs, model_dirs),
        "git_commit": git_commit(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_summary(database, model: str, path, config: dict, model_dirs: dict) -> dict:
    """Write `results/genies_table/<model>.json` atomically; return what was written."""
    summary = run_summary(database, model, config, model_dirs)
    write_json(summary, path)
    return summary
