"""CSV/Markdown tables and PNG plots of the GENIES table, from a small results.duckdb."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from genies.io import TRACKED_PACKAGES, package_versions
from genies.results.report import (
    REPORT_TEMPLATES,
    markdown_table,
    report_paths,
    shift_matrix_wide,
    write_reports,
)
from genies.results.summary import package_versions_of

from .test_cells import RESULTS, query, write_example_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results = dict(RESULTS)
    del results[("mms", "src_a", "tgt_c")]  # one incomplete cell
    database, _ = write_example_results(root, results, models=("m", "other"))
    paths = {k: str(root / v) for k, v in report_paths("m").items()}
    write_reports(database, "m", paths)
    return database, paths


def test_report_paths_follow_the_templates():
    assert report_paths("llama-7b")["table_csv"] == "results/genies_table/llama-7b.csv"
    assert set(report_paths("x")) == set(REPORT_TEMPLATES)


def test_genies_table_csv_and_markdown(reports):
    _, paths = reports
    table = pd.read_csv(paths["table_csv"])
    assert list(table["intervention"]) == ["lora", "mms", "zero_shot"]
    assert set(table["model"]) == {"m"}
    for column in (
        "avg_differential_elicitation",
        "avg_differential_elicitation_low",
        "avg_differential_elicitation_high",
        "avg_differential_elicitation_se",
        "capable_differential_elicitation",
        "avg_rms_calibration_error",
        "avg_rms_calibration_error_genies",
        "avg_id_target_accuracy",
        "extreme_avg_differential_elicitation",
        "probing_avg_differential_elicitation",
        "complete_shifts",
    ):
        assert column in table.columns
    assert pd.api.types.is_float_dtype(table["avg_differential_elicitation"])
    lora = table.set_index("intervention").loc["lora"]
    assert lora["avg_differential_elicitation"] == pytest.approx((0.5 - 0.25) / 2 / (5 / 6))
    assert lora["avg_differential_elicitation_low"] <= lora["avg_differential_elicitation_high"]
    # The extreme and probing sets have one configured shift of two each.
    assert (lora["extreme_shifts"], lora["extreme_set_size"]) == (1, 2)
    assert lora["partial"] == (
        "extreme_avg_differential_elicitation (1/2); probing_avg_differential_elicitation (1/2)"
    )
    mms = table.set_index("intervention").loc["mms"]
    assert (mms["shifts"], mms["complete_shifts"], mms["genies_shifts"]) == (2, 1, 1)
    # One shift with DE: no standard error, the genies RMS variant is NULL for 4 pairs.
    assert pd.isna(mms["avg_differential_elicitation_se"])
    assert mms["partial"].startswith("avg_differential_elicitation (1/2); ")

    text = open(paths["table_md"]).read()
    assert text.startswith("# GENIES table: m\n")
    assert "| intervention | avg DE | avg DE 95% interval | capable DE |" in text
    low, high = lora["avg_differential_elicitation_low"], lora["avg_differential_elicitation_high"]
    # lora covers the GENIES set (a plain number), half of the extreme and probing sets.
    assert f"| lora | 0.1500 | [{low:.4f}, {high:.4f}] | 0.5500 |" in text
    assert "| 0.6000 (1/2) | -0.3000 (1/2) |" in text
    assert "| mms | 0.3000 (1/2) |" in text
    assert "a partial mean, not the paper's column" in text
    assert "GENIES set (2 shifts), extreme set (2), probing set (2)" in text
    assert "## Incomplete cells" in text
    assert "generalization: results/predictions/m/mms/src_a/tgt_c.parquet" in text


def test_comparisons_markdown(reports):
    database, paths = reports
    text = open(paths["comparisons_md"]).read()
    assert text.startswith("# Paired comparisons: m\n")
    assert "| intervention | other | shifts | avg DE | other's avg DE | difference |" in text
    (row,) = query(
        database,
        "select difference, difference_low, difference_high, ahead_share from comparisons"
        " where model = 'm' and intervention = 'lora' and other = 'zero_shot'",
    )
    difference, low, high, ahead = row
    assert f"| lora | zero_shot | 2 | 0.1500 | 0.0000 | {difference:.4f} | " in text
    assert f"[{low:.4f}, {high:.4f}] | {ahead:.4f} |" in text
    # Each pair once, the one ahead first.
    assert "| zero_shot | lora |" not in text
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == 1 + 3


def test_shift_matrix_is_pivoted_with_baseline_first(reports):
    _, paths = reports
    wide = pd.read_csv(paths["shift_matrix_csv"])
    assert list(wide.columns) == [
        "shift_id",
        "source",
        "target",
        "label",
        "zero_shot",
        "lora",
        "mms",
    ]
    assert list(wide["shift_id"]) == ["src_a__tgt_b", "src_a__tgt_c"]
    assert list(wide["label"]) == ["extreme", "probing"]
    assert wide["lora"].tolist() == pytest.approx([0.5 / (5 / 6), -0.25 / (5 / 6)])
    assert wide["mms"][0] == pytest.approx(0.25 / (5 / 6)) and pd.isna(wide["mms"][1])
    text = open(paths["shift_matrix_md"]).read()
    assert "| shift_id | source | target | label | zero_shot | lora | mms |" in text
    assert "| src_a__tgt_c | src_a | tgt_c | probing | 0.0000 | -0.3000 | n/a |" in text


def test_plots_are_png_files(reports):
    _, paths = reports
    for name in ("de_heatmap", "generalization_plot", "de_bars"):
        data = open(paths[name], "rb").read()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name


def test_model_without_cells_still_gets_every_output(reports, tmp_path):
    database, _ = reports
    paths = {k: str(tmp_path / v) for k, v in report_paths("absent").items()}
    write_reports(database, "absent", paths)
    assert pd.read_csv(paths["shift_matrix_csv"]).columns.tolist()[:4] == [
        "shift_id",
        "source",
        "target",
        "label",
    ]
    assert open(paths["de_bars"], "rb").read().startswith(PNG_MAGIC)


def test_unlabelled_shifts_keep_their_rows():
    matrix = pd.DataFrame(
        {
            "shift_index": [1, 0, 1],
            "shift_id": ["b", "a", "b"],
            "source": ["s", "s", "s"],
            "target": ["u", "t", "u"],
            "label": [None, "extreme", None],
            "intervention": ["x", "zero_shot", "zero_shot"],
            "differential_elicitation": [0.5, 0.0, 0.0],
        }
    )
    wide = shift_matrix_wide(matrix)
    assert list(wide["shift_id"]) == ["a", "b"]
    assert list(wide.columns[4:]) == ["zero_shot", "x"]
    assert wide["x"].iloc[1] == 0.5 and pd.isna(wide["x"].iloc[0])
    assert markdown_table(pd.DataFrame({"a": [1.23456, None], "b": ["p|q", "r"]})) == (
        "| a | b |\n|---|---|\n| 1.2346 | p\\|q |\n| n/a | r |\n"
    )


def test_results_file_holds_table_cells_config_models_and_versions(reports, tmp_path):
    database, csv_paths = reports
    model_dir = tmp_path / "resources/models/m"
    model_dir.mkdir(parents=True)
    info = {"spec": {"source": "hf", "repo": "org/m"}, "description": {"commit": "abc123"}}
    (model_dir / "genies_model.json").write_text(json.dumps(info))
    config = {"seed": 0, "run_models": ["m"]}
    paths = {k: str(tmp_path / v) for k, v in report_paths("m").items()}
    write_reports(database, "m", paths, config=config, model_dirs={"m": str(model_dir)})

    def no_nan(text):
        raise AssertionError(f"not JSON: {text}")

    summary = json.loads(open(paths["results_json"]).read(), parse_constant=no_nan)
    assert summary["format"] == "genies-results/1" and summary["model"] == "m"
    assert summary["config"] == config and summary["models"] == {"m": info}
    # the table: the CSV's rows and numbers, intervals and shift counts included
    table = pd.read_csv(csv_paths["table_csv"])
    rows = {r["intervention"]: r for r in summary["table"]}
    assert sorted(rows) == sorted(table["intervention"])
    for _, row in table.iterrows():
        got = rows[row["intervention"]]
        for column in ("avg_differential_elicitation_low", "genies_shifts", "genies_set_size"):
            assert got[column] == pytest.approx(row[column], abs=1e-12), column
    # every cell of m, the incomplete one with its missing numbers as null
    cells = query(database, "select shift_id, intervention, pairs from cells where model = 'm'")
    assert sorted((c["shift_id"], c["intervention"], c["pairs"]) for c in summary["cells"]) == (
        sorted(cells)
    )
    incomplete = [c for c in summary["cells"] if not c["complete"]]
    assert len(incomplete) == 1 and incomplete[0]["differential_elicitation"] is None
    assert {c["model"] for c in summary["cells"] + summary["comparisons"]} == {"m"}
    # every tracked package, with the version this process has
    assert set(TRACKED_PACKAGES) <= set(summary["packages"])
    assert summary["packages"]["numpy"] == [np.__version__]


def test_package_versions_of_the_runs_behind_a_model():
    runs = pd.DataFrame(
        {
            "model": ["m", None, "other", "rm"],
            "packages": [
                json.dumps({"torch": "1.0", "numpy": None}),
                json.dumps({"pyarrow": "0.1"}),  # materialised data: behind every model
                json.dumps({"torch": "9.9"}),  # another run model's: not behind m
                json.dumps({"transformers": "0.2"}),  # m's own reward model
            ],
        }
    )
    versions = package_versions_of(runs, ["m", "rm"])
    assert versions["torch"] == sorted(["1.0", package_versions()["torch"]])
    assert "0.1" in versions["pyarrow"] and "0.2" in versions["transformers"]
    assert "9.9" not in versions["torch"]
