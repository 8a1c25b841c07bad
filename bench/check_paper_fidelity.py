#!/usr/bin/env python
"""Check the section "Where the paper and its published data disagree" of docs/fidelity.md.

Every figure in that section's tables is recomputed from the paper's published runs, imported
as the workflow imports them (`genies.results.published.import_published`, cells by
`published_cells`, the Table 5 columns by the `genies_table` view of `genies.results.aggregate`),
and compared with the figure as printed, at the precision it is printed with. The paper's own
values come from the paper and are not recomputed; a paper cell that carries a verdict,
"(yes)" or "(no)", must agree with the published runs' value rounded to the paper's precision.
When the Table 5 table gives paper values for avg DE or probing avg DE, every non-empty subset
of the GENIES (15) or probing (19) shifts is tried, and the section must state how many subsets
give all those values at once.

    python bench/check_paper_fidelity.py            # check docs/fidelity.md
    python bench/check_paper_fidelity.py --show     # print every recomputed figure

Exit status: 0 when every figure matches; 1 when a figure differs, when a table cell has no
recomputation, or when a recomputed figure is missing from the section; 2 when the published
runs or the data are absent. About 20 s of CPU (the import is most of it).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DOC = ROOT / "docs" / "fidelity.md"
DEFAULT_PUBLISHED = ROOT.parent / "shared" / "genies-published" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "genies-data"

SECTION = "## Where the paper and its published data disagree"
#: The model of the paper's Table 5 and appendix B.6.
MODEL = "llama-30b"
#: Table 5's rows (this workflow's intervention names).
ORDER = ["zero_shot", "few_shot", "prompt_tuning", "lora", "ccs", "cra", "lat1", "lat2", "mms"]
#: The interventions of appendix B.6.
B6 = ["mms", "lora", "lat1", "ccs", "cra"]

# The section's tables, by the ### heading above each, and the column that names a row.
T_TABLE5 = "Table 5 (llama-30b)"
T_TRIED = "What was tried for Table 5's avg DE"
T_TEXT = "Numbers in the text"
T_TEXT_TRIED = "What was tried for the numbers in the text"
T_CHECKS = "Further checks"
ROW_NAMES = {
    T_TABLE5: "intervention",
    T_TRIED: "variant",
    T_TEXT: "number",
    T_TEXT_TRIED: "attempt",
    T_CHECKS: "check",
}
#: genies_table column of each Table 5 heading.
TABLE5_COLUMNS = {
    "ID target acc.": "avg_id_target_accuracy",
    "extreme avg DE": "extreme_avg_differential_elicitation",
    "avg DE": "avg_differential_elicitation",
    "probing avg DE": "probing_avg_differential_elicitation",
    "RMS calib. err. (genies)": "avg_rms_calibration_error_genies",
    "RMS calib. err. (standard)": "avg_rms_calibration_error",
}
#: Table 5 column with paper values -> (registry flag of its shift set, the set's name).
SUBSET_SETS = {"avg DE": ("in_genies", "GENIES"), "probing avg DE": ("in_probing_set", "probing")}

NOT_APPLICABLE = {"–", "-", "n/a"}
UNKNOWN = "?"
NUMBER = re.compile(r"(?<![\w.])(-?\d[\d,]*(?:\.\d+)?)(%?)")
VERDICT = re.compile(r"\((yes|no)\)")


# --- recomputation ------------------------------------------------------------------------------


def import_runs(published_folder: Path, data_dir: Path, workdir: Path, n_resamples: int):
    """(imported tables, cells of every registered shift, shift registry) of the published
    runs, imported into `workdir`; `n_resamples` bootstrap draws per cell interval."""
    from genies.data.shifts import shift_sets, shifts_table
    from genies.results import published

    paths = {name: workdir / f"{name}.parquet" for name in published.OUTPUTS}
    published.import_published(published_folder, data_dir, paths)
    tables = published.read_imported(paths)
    sets = shift_sets(data_dir)
    registry = shifts_table(sets["genies"], sets)
    return tables, published.published_cells(tables, registry, n_resamples=n_resamples), registry


def load_published(published_folder: Path, data_dir: Path, workdir: Path) -> dict:
    """The imported runs and capabilities, the cells of every registered shift, the shift
    registry and the rows of the genies_table view, as pandas frames."""
    # No interval is read here: the fewest bootstrap draws.
    return frames(*import_runs(published_folder, data_dir, workdir, n_resamples=2))


def frames(tables: dict, cells, registry) -> dict:
    """`load_published`'s frames from imported tables, their cells and the shift registry."""
    import duckdb

    from genies.results.aggregate import VIEWS
    from genies.results.significance import INTERVAL_SCHEMA

    con = duckdb.connect()
    try:
        inputs = {"cells": cells, "shifts": registry, "intervals": INTERVAL_SCHEMA.empty_table()}
        for name, table in inputs.items():
            con.register("incoming", table)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM incoming')
            con.unregister("incoming")
        con.execute(VIEWS["genies_table"])
        genies_table = con.execute("SELECT * FROM genies_table").df()
    finally:
        con.close()
    flags = ["shift_id", "in_genies", "in_extreme_set", "in_probing_set"]
    return {
        "runs": tables["runs"].to_pandas(),
        "capabilities": tables["capabilities"].to_pandas(),
        "cells": cells.to_pandas().merge(registry.to_pandas()[flags], on="shift_id"),
        "registry": registry.to_pandas().sort_values("shift_index"),
        "genies_table": genies_table.set_index(["model", "intervention"]),
    }


def _cells(loaded, model=MODEL, intervention=None, flag=None) -> pd.DataFrame:
    cells = loaded["cells"]
    mask = cells["model"] == model + "@published"
    if intervention is not None:
        mask &= cells["intervention"] == intervention
    if flag is not None:
        mask &= cells[flag]
    return cells[mask]


def _matrix(cells: pd.DataFrame, value: str, shift_ids) -> pd.DataFrame:
    """shift x intervention (ORDER) of one cell column."""
    wide = cells.pivot(index="shift_id", columns="intervention", values=value)
    return wide.reindex(index=list(shift_ids), columns=ORDER)


def _file_accuracy(path: Path, intervention: str) -> float:
    """A stored run's accuracy from its probabilities, by upstream's rule (the import's)."""
    from genies.results.published import correct_pairs

    p = np.asarray(json.loads(path.read_text())["eval_probabilities"], dtype=np.float64)
    return float(np.mean(correct_pairs(intervention, p)))


def _pearson(x, y) -> float:
    return float(np.corrcoef(np.asarray(x, float), np.asarray(y, float))[0, 1])


def _share(mask: pd.Series) -> tuple[int, int]:
    return int(mask.sum()), len(mask)


def recompute(loaded: dict, published_folder: Path, data_dir: Path) -> dict:
    """Every figure of the section's tables: {(table, row, column): value}.

    A value is a fraction or a plain number (a printed percentage is compared with 100 x the
    value), (k, n) for a cell "k of n", or None where the section prints "–".
    """
    from genies.data.raw import RawData
    from genies.pipeline.plan import NO_TRAIN

    out: dict[tuple[str, str, str], object] = {}
    registry = loaded["registry"]
    genies = registry[registry["in_genies"]]
    ids = list(genies["shift_id"])
    model = MODEL + "@published"
    evaluations = published_folder / "evaluations"

    # Table 5: the genies_table view of llama-30b@published.
    for intervention in ORDER:
        row = loaded["genies_table"].loc[(model, intervention)]
        for heading, column in TABLE5_COLUMNS.items():
            value = row[column]
            out[(T_TABLE5, intervention, heading)] = None if pd.isna(value) else float(value)

    # Variants of Table 5's avg DE over the 15 GENIES shifts.
    cells = _cells(loaded, flag="in_genies")
    de = _matrix(cells, "differential_elicitation", ids)
    accuracy = _matrix(cells, "generalization_accuracy", ids)
    id_target = _matrix(cells, "id_target_accuracy", ids)
    per_shift = cells[cells["intervention"] == "zero_shot"].set_index("shift_id").loc[ids]
    baseline, capability = per_shift["baseline_accuracy"], per_shift["capability"]
    runs = loaded["runs"]
    base_runs = runs[
        (runs["model"] == model)
        & (runs["intervention"] == "zero_shot")
        & (runs["train"] == NO_TRAIN)
    ].set_index("eval")["accuracy"]
    base = pd.Series([base_runs.get(t, np.nan) for t in genies["target"]], index=ids, dtype=float)
    gain = accuracy.sub(baseline, axis=0)

    entries = RawData(data_dir).read_json("distribution_shifts/all.json")
    rows69 = [f"{e['source']}__{e['target']}" for e in entries]
    de_all = _cells(loaded).pivot(
        index="shift_id", columns="intervention", values="differential_elicitation"
    )
    old_folder = evaluations / "lora_fine_tuning" / "old_evals" / "classify_lora"
    old_lora = pd.Series(
        {
            shift_id: _file_accuracy(path, "lora") if path.exists() else np.nan
            for shift_id, source, target in zip(
                ids, genies["source"], genies["target"], strict=True
            )
            for path in [old_folder / f"{MODEL}-{source}" / f"{target}.json"]
        }
    )

    def other_model(name):
        table = loaded["genies_table"]
        return pd.Series(
            {
                i: table.loc[(name + "@published", i), "avg_differential_elicitation"]
                for i in ORDER
                if (name + "@published", i) in table.index
            }
        )

    variants = {
        "the published runs (as above)": de.mean(),
        "B.6 as printed (whole percent), averaged": (de * 100).round(0).mean() / 100,
        "median over the 15 shifts": de.median(),
        # alpaca_long has no base-model run: its per-source run is kept.
        "baseline: the base model's own zero-shot run": accuracy.sub(base.fillna(baseline), axis=0)
        .div(capability, axis=0)
        .mean(),
        "capability: the intervention's own ID target accuracy": gain.div(id_target).mean(),
        "capability: LoRA's ID target accuracy": gain.div(id_target["lora"], axis=0).mean(),
        "ratio of means": (accuracy.mean() - baseline.mean()) / capability.mean(),
        "accuracy gain, not divided by the capability": gain.mean(),
        "mean over all.csv's 69 rows": de_all.reindex(index=rows69, columns=ORDER).mean(),
        "mean over the 56 distinct shifts of all.json": de_all.reindex(columns=ORDER).mean(),
        "LoRA: its older runs in old_evals/classify_lora/": pd.Series(
            {"lora": ((old_lora - baseline) / capability).mean()}
        ),
        "llama-13b": other_model("llama-13b"),
        "llama-7b": other_model("llama-7b"),
    }
    for name, values in variants.items():
        for intervention in ORDER:
            value = values.get(intervention, np.nan)
            out[(T_TRIED, name, intervention)] = None if pd.isna(value) else float(value)

    # Numbers in the text.
    lora = evaluations / "lora_fine_tuning"
    copies = [
        lora / sub / f"{MODEL}-code" / "us_history.json"
        for sub in ("", f"{MODEL}-code", "classify_lora", f"classify_lora/{MODEL}-code")
    ]
    values = {_file_accuracy(p, "lora") for p in copies}
    values |= {json.loads(p.read_text())["eval_accuracy"] for p in copies}
    text = {
        # One value when the four copies and their stored accuracies all agree.
        "code -> us_history, LoRA accuracy (llama-30b)": values.pop()
        if len(values) == 1
        else float("nan")
    }
    # The targets of the shifts (the capability files also cover us_history_exam_questions,
    # which no shift targets).
    capabilities = loaded["capabilities"]
    capabilities = capabilities[
        (capabilities["model"] == model) & capabilities["target"].isin(set(registry["target"]))
    ]["capability_intervention"]
    for label, name in (("LoRA", "lora"), ("MMS", "mms")):
        text[f"share of targets whose capability is {label} (llama-30b)"] = _share(
            capabilities == name
        )
    every = list(registry["shift_id"])
    zero = _cells(loaded, intervention="zero_shot").set_index("shift_id")["generalization_accuracy"]
    few = _cells(loaded, intervention="few_shot").set_index("shift_id")["generalization_accuracy"]
    r56 = _pearson(zero.loc[every], few.loc[every])
    text["few-shot vs zero-shot correlation (llama-30b)"] = r56
    text['an "elicitation" of 75%'] = None  # the run is not identified
    for name, value in text.items():
        out[(T_TEXT, name, "published runs")] = value

    tried = {}
    for other in ("llama-7b", "llama-13b", "openllama-3b"):
        path = lora / f"{other}-code" / "us_history.json"
        tried[f"code -> us_history: the LoRA run of {other}"] = _file_accuracy(path, "lora")
    every_zero = loaded["cells"][loaded["cells"]["intervention"] == "zero_shot"]
    for label, name in (("LoRA", "lora"), ("MMS", "mms")):
        tried[f"capability is {label}: every (model, shift) of the 4 models, 56 shifts each"] = (
            _share(every_zero["capability_intervention"] == name)
        )
    for label, name in (("LoRA", "lora"), ("prompt tuning", "prompt_tuning")):
        tried[f"capability is {label}: llama-30b, the 15 GENIES shifts"] = _share(
            per_shift["capability_intervention"] == name
        )
    r69 = _pearson(zero.loc[rows69], few.loc[rows69])
    tried["correlation: r squared, the same 56 shifts"] = r56**2
    tried["correlation: r over all.csv's 69 rows"] = r69
    tried["correlation: r squared over all.csv's 69 rows"] = r69**2
    tried["correlation: Spearman's rho, 56 shifts"] = _pearson(
        zero.loc[every].rank(), few.loc[every].rank()
    )
    tried["correlation: r over the 15 GENIES shifts"] = _pearson(zero.loc[ids], few.loc[ids])
    for other in ("llama-7b", "llama-13b"):
        z = _cells(loaded, other, "zero_shot").set_index("shift_id")["generalization_accuracy"]
        f = _cells(loaded, other, "few_shot").set_index("shift_id")["generalization_accuracy"]
        tried[f"correlation: r, {other}, 56 shifts"] = _pearson(z.loc[every], f.loc[every])
    for name, value in tried.items():
        out[(T_TEXT_TRIED, name, "value")] = value

    # Appendix B.6 and the zero-shot runs behind B.5.
    has_base = base.notna()
    differs = has_base & (base.round(12) != baseline.round(12))
    checks = {
        "B.6 values recomputed (DE of MMS, LoRA, LAT1, CCS, CRA on 15 shifts)": int(
            de[B6].notna().to_numpy().sum()
        ),
        "GENIES targets with a base-model zero-shot run (llama-30b)": _share(has_base),
        "of those, targets where it differs from the per-source run": (
            int(differs.sum()),
            int(has_base.sum()),
        ),
    }
    for name, value in checks.items():
        out[(T_CHECKS, name, "value")] = value
    return out


def subset_rows(loaded: dict, paper: dict[str, dict[str, float]]) -> dict:
    """The subsets rows of T_CHECKS for the paper values given (column -> intervention ->
    whole percent): how many non-empty subsets of the column's shift set give every known
    value at once, and the fewest that give one of them alone."""
    out = {}
    registry = loaded["registry"]
    for column, values in paper.items():
        if not values or column not in SUBSET_SETS:
            continue
        flag, set_name = SUBSET_SETS[column]
        ids = list(registry[registry[flag]]["shift_id"])
        de = _matrix(_cells(loaded, flag=flag), "differential_elicitation", ids)
        names = list(values)
        matrix = de[names].to_numpy() * 100  # shifts x interventions
        n = len(ids)
        target = np.array([values[i] for i in names])
        common, alone = 0, np.zeros(len(names), dtype=np.int64)
        bits = np.arange(n)
        for start in range(1, 2**n, 1 << 16):  # in chunks: 2^19 subsets for the probing set
            codes = np.arange(start, min(start + (1 << 16), 2**n))
            masks = ((codes[:, None] >> bits) & 1).astype(np.float64)
            means = masks @ matrix / masks.sum(axis=1, keepdims=True)
            hit = np.floor(means + 0.5) == target
            common += int(hit.all(axis=1).sum())
            alone += hit.sum(axis=0)
        total = 2**n - 1
        label = f"subsets of the {n} {set_name} shifts giving"
        out[(T_CHECKS, f"{label} every known paper {column} at once", "value")] = (common, total)
        out[(T_CHECKS, f"{label} one known paper {column} alone (fewest)", "value")] = (
            int(alone.min()),
            total,
        )
    return out


# --- the section's tables -----------------------------------------------------------------------


def section_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """{### heading: rows as {column heading: cell}} of the section's Markdown tables."""
    start = text.find(SECTION)
    if start < 0:
        raise SystemExit(f"section {SECTION!r} not found")
    end = text.find("\n## ", start + len(SECTION))
    lines = text[start : end if end >= 0 else len(text)].splitlines()
    tables: dict[str, list[dict[str, str]]] = {}
    heading, i = None, 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("### "):
            heading = line[4:].strip()
        if line.startswith("|") and heading is not None:
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            head = block[0]
            tables[heading] = [dict(zip(head, row, strict=True)) for row in block[2:]]
            continue
        i += 1
    return tables


def parse_numbers(cell: str) -> list[tuple[float, int, bool]]:
    """(value, decimals, is_percent) of every number in a cell."""
    found = []
    for number, percent in NUMBER.findall(cell.replace("−", "-")):
        number = number.replace(",", "")
        decimals = len(number.split(".")[1]) if "." in number else 0
        found.append((float(number), decimals, percent == "%"))
    return found


def _agrees(value: float, printed: float, decimals: int) -> bool:
    return abs(value - printed) <= 0.5 * 10**-decimals + 1e-9


def _round_half_up(x: float, decimals: int) -> float:
    return math.floor(x * 10**decimals + 0.5) / 10**decimals


def compare(cell: str, expected) -> str | None:
    """None when a printed cell agrees with its recomputed value, else what differs."""
    text = cell.strip()
    if expected is None:
        return None if text in NOT_APPLICABLE or text == UNKNOWN else "expected '–'"
    if text in NOT_APPLICABLE or text == UNKNOWN:
        return f"printed {text!r}, recomputed {expected}"
    numbers = parse_numbers(text)
    if isinstance(expected, tuple):  # "k of n", optionally with k/n as a percentage
        k, n = expected
        if [v for v, _, _ in numbers[:2]] != [float(k), float(n)]:
            return f"printed {text!r}, recomputed '{k} of {n}'"
        for value, decimals, percent in numbers[2:]:
            if percent and not _agrees(100 * k / n, value, decimals):
                return f"printed {value}%, recomputed {100 * k / n:.3f}% ({k}/{n})"
        return None
    if not numbers:
        return f"no number in {text!r}"
    if isinstance(expected, float) and math.isnan(expected):
        return "the runs it is computed from do not agree among themselves"
    value, decimals, percent = numbers[0]
    want = 100 * expected if percent else expected
    if not _agrees(want, value, decimals):
        return f"printed {text!r}, recomputed {want:.{decimals + 2}f}"
    return None


def verdict(cell: str, runs_value) -> str | None:
    """A paper cell "x (yes)" or "x and y (no)" says whether one of the paper's values equals
    the runs' value rounded to that value's precision. None when it says so rightly."""
    match = VERDICT.search(cell)
    if match is None or runs_value is None:
        return None
    if isinstance(runs_value, tuple):
        runs_value = runs_value[0] / runs_value[1]
    equal = any(
        _round_half_up(100 * runs_value if percent else runs_value, decimals) == value
        for value, decimals, percent in parse_numbers(cell[: match.start()])
    )
    if equal == (match.group(1) == "yes"):
        return None
    return f"says ({match.group(1)}), but the runs give {runs_value:.4f}"


def check(text: str, expected: dict, subsets) -> list[str]:
    """What in the section's tables disagrees with `expected`; `subsets(paper)` gives the
    subset rows for the paper values found in the Table 5 table."""
    tables = section_tables(text)
    problems = [f"table '### {h}' not found" for h in ROW_NAMES if h not in tables]
    printed: dict[tuple[str, str, str], str] = {}
    paper: dict[str, dict[str, float]] = {}
    for heading, key in ROW_NAMES.items():
        for row in tables.get(heading, []):
            name = row[key]
            for column, cell in row.items():
                if column == key:
                    continue
                if column.endswith("(paper)") or column == "paper":
                    runs_column = (
                        "published runs" if column == "paper" else column.removesuffix(" (paper)")
                    )
                    if problem := verdict(cell, expected.get((heading, name, runs_column))):
                        problems.append(f"{heading} / {name} / {column}: {problem}")
                    numbers = parse_numbers(VERDICT.sub("", cell))
                    if heading == T_TABLE5 and cell != UNKNOWN and numbers:
                        paper.setdefault(runs_column, {})[name] = numbers[0][0]
                    continue
                printed[(heading, name, column)] = cell
    expected = {**expected, **subsets(paper)}
    for key, cell in printed.items():
        if key not in expected:
            problems.append(f"{' / '.join(key)}: not a figure this script recomputes")
        elif problem := compare(cell, expected[key]):
            problems.append(f"{' / '.join(key)}: {problem}")
    for key in expected.keys() - printed.keys():
        if expected[key] is not None:
            problems.append(f"{' / '.join(key)}: recomputed, but not in the section")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC)
    parser.add_argument("--published", type=Path, default=DEFAULT_PUBLISHED)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--show", action="store_true", help="print every recomputed figure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    for path in (args.published, args.data):
        if not path.exists():
            print(f"needs {path}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_published(args.published, args.data, Path(tmp))
    expected = recompute(loaded, args.published, args.data)
    if args.show:
        for key, value in expected.items():
            print(" | ".join(key), "=", f"{value:.6f}" if isinstance(value, float) else value)
        return 0
    problems = check(args.doc.read_text(), expected, lambda paper: subset_rows(loaded, paper))
    for problem in problems:
        print(problem)
    title = SECTION.removeprefix("## ")
    if problems:
        print(f"{len(problems)} problem(s) in '{title}' ({args.doc})")
        return 1
    print(f"every figure of '{title}' ({args.doc}) matches the published runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
