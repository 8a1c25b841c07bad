"""Import of the paper's published runs (genies.results.published) and their cells.

Unit tests use a hand-made published folder over the small fixture data. The tests marked
`published` read the real published runs and data in ../shared (skipped when absent; deselect
with -m "not published"): the per-shift numbers computed from the published runs must
reproduce upstream's generalization_metrics CSVs.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pytest

from genies.data.materialise import load_split
from genies.data.predictions import expand_pairs, predictions_table, read_predictions
from genies.data.raw import RawData
from genies.data.shifts import load_shifts, shift_sets, shifts_table
from genies.errors import ConfigError
from genies.io import write_parquet
from genies.results import published
from genies.results.aggregate import build_database

from .fixtures import make_genies_folder

MODEL = "llama-7b@published"

# Upstream file (under evaluations/) -> probabilities, or None for an accuracy-only (CCS) run.
# Test pairs of the fixture data (6 examples each): src_a 6, tgt_b 12, tgt_c 6, ref_d 18.
RUNS = {
    # Trainer-based: the tie (0.5) counts as correct: 8/12.
    "lora_fine_tuning/llama-7b-src_a/tgt_b.json": [0.9, 0.5, 0.2, 0.7] + [0.8] * 5 + [0.1] * 3,
    "lora_fine_tuning/llama-7b-src_a/tgt_c.json": [0.6, 0.4, 0.6, 0.4, 0.6, 0.6],
    "lora_fine_tuning/llama-7b-src_a/src_a.json": [0.9] * 6,
    "lora_fine_tuning/llama-7b-tgt_b/tgt_b.json": [0.9] * 12,
    "lora_fine_tuning/llama-7b-ref_d/ref_d.json": [0.9] * 18,
    # A probe: a tie is not a win: 4/12.
    "mms/llama-7b-src_a/tgt_b.json": [0.5, 0.5, 0.7, 0.7, 0.7, 0.7] + [0.3] * 6,
    "mms/llama-7b-src_a/src_a.json": [0.7] * 6,
    # Zero-shot once per source; the base-model run of tgt_b differs and must not be the
    # baseline.
    "zero_shot/llama-7b-src_a/tgt_b.json": [1.0] * 3 + [0.0] * 9,
    "zero_shot/llama-7b-src_a/tgt_c.json": [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    "zero_shot/llama-7b-src_a/src_a.json": [1.0] * 6,
    "zero_shot/llama-7b/tgt_b.json": [1.0] * 12,
    # Few-shot dropped long examples: 3 of the 6 tgt_b examples, 2 pairs each.
    "few_shot/llama-7b-src_a/tgt_b.json": [0.9, 0.1, 0.9, 0.9, 0.1, 0.9],
    # A run cut to its first pairs (upstream's max_examples).
    "lat_stim_1/llama-7b-src_a/tgt_b.json": [0.9, 0.9, 0.1, 0.9],
    "ccs/llama-7b-src_a/tgt_b.json": None,
    # Left out:
    "log_probs_4bit/llama-7b/tgt_b.json": [0.5] * 12,
    "lat_stim_1/lat/llama-7b-src_a/tgt_b.json": [0.5] * 12,
    "lora_fine_tuning/llama-7b-src_a-tgt_b-5%/tgt_b.json": [0.5] * 12,
    "zero_shot/pythia-410m/tgt_b.json": [0.5] * 12,
    "human_eval/human/tgt_b.json": [0.5] * 3,
}
LEFT_OUT = 5
CCS_ACCURACY = 0.58
CAPABILITIES = {
    "tgt_b": {"best_intervention": "classify_lora", "best_intervention_accuracy": 0.8},
    "tgt_c": {
        "best_intervention": "mms",
        "best_intervention_accuracy": 0.9,
        "target_reference": "ref_d",
    },
    "unreleased": {"best_intervention": "mms", "best_intervention_accuracy": 1.0},
}


def write_published(root: Path) -> Path:
    """A published results/ folder with RUNS and CAPABILITIES."""
    for rel, probabilities in RUNS.items():
        path = root / "evaluations" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if probabilities is None:
            run = {"eval_accuracy": CCS_ACCURACY, "eval_score": CCS_ACCURACY}
        else:
            p = np.asarray(probabilities)
            tie_wins = any(rel.startswith(f) for f in ("lora", "zero_shot", "few_shot"))
            run = {
                "eval_accuracy": float(np.mean(p >= 0.5 if tie_wins else p > 0.5)),
                "eval_probabilities": probabilities,
                "timestamp": "2023-10-13 22:02:08",
            }
        path.write_text(json.dumps(run))
    for target, entry in CAPABILITIES.items():
        path = root / "target_tuned_capability" / "llama-7b" / f"{target}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if target != "unreleased":
            entry = {"target": target, "target_reference": target, **entry}
        path.write_text(json.dumps(entry))
    return root


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    data = make_genies_folder(root / "data")
    folder = write_published(root / "results")
    paths = {name: root / "out" / f"{name}.parquet" for name in published.OUTPUTS}
    stats = published.import_published(folder, data, paths)
    sets = shift_sets(data)
    registry = shifts_table(load_shifts("genies", data), sets)
    return {
        "data": data,
        "paths": paths,
        "stats": stats,
        "tables": published.read_imported(paths),
        "registry": registry,
    }


def _runs(imported) -> dict[tuple[str, str, str], dict]:
    return {
        (r["intervention"], r["train"], r["eval"]): r
        for r in imported["tables"]["runs"].to_pylist()
    }


def _predictions(imported, intervention, train, eval_dataset) -> dict[str, list]:
    table = imported["tables"]["predictions"]
    mask = pc.and_(
        pc.and_(
            pc.equal(table.column("intervention"), intervention),
            pc.equal(table.column("train"), train),
        ),
        pc.equal(table.column("eval"), eval_dataset),
    )
    return table.filter(mask).to_pydict()


def test_parse_run_maps_names_and_leaves_out_the_rest():
    datasets = {"alpaca_mmlu", "spanish_output"}

    def parse(rel):
        return published.parse_run(Path(rel), datasets)

    assert parse("lora_fine_tuning/llama-30b-alpaca_mmlu/spanish_output.json") == (
        "llama-30b",
        "lora",
        "alpaca_mmlu",
        "spanish_output",
    )
    assert parse("lat_stim_1/openllama-3b-alpaca_mmlu/alpaca_mmlu.json")[:2] == (
        "openllama-3b",
        "lat1",
    )
    assert parse("lat_stim_2/llama-13b-alpaca_mmlu/alpaca_mmlu.json")[1] == "lat2"
    assert parse("zero_shot/llama-7b/spanish_output.json") == (
        "llama-7b",
        "zero_shot",
        "none",
        "spanish_output",
    )
    for rel, reason in [
        ("log_probs_4bit/llama-7b/spanish_output.json", "log_probs_4bit"),
        ("human_eval/human/spanish_output.json", "human_eval"),
        ("lat_stim_1/lat/llama-7b-alpaca_mmlu/spanish_output.json", "nested"),
        ("lora_fine_tuning/llama-30b-alpaca_mmlu-spanish_output-5%/x.json", "not a dataset"),
        ("lora_fine_tune/pythia-410m-alpaca_mmlu/alpaca_mmlu.json", "smoke test"),
        ("mms/llama-7b-alpaca_mmlu/unhelpful_qa.json", "not a released dataset"),
        ("pro/llama-7b-alpaca_mmlu/alpaca_mmlu.json", "unknown folder"),
    ]:
        assert reason in parse(rel), rel
    # Every upstream name maps to an intervention of the registry.
    from genies.pipeline.interventions import REGISTRY

    assert set(published.INTERVENTIONS.values()) <= set(REGISTRY)
    assert set(published.CAPABILITY_NAMES.values()) <= set(REGISTRY)


def test_tie_rule():
    p = np.array([0.5, 0.7, 0.3, 0.5])
    assert published.correct_pairs("lora", p).tolist() == [True, True, False, True]
    assert published.correct_pairs("zero_shot", p).tolist() == [True, True, False, True]
    assert published.correct_pairs("mms", p).tolist() == [False, True, False, False]
    assert published.correct_pairs("lat2", p).tolist() == [False, True, False, False]


def test_import_reproduces_every_stored_accuracy(imported):
    runs = _runs(imported)
    assert imported["stats"]["left_out"] == LEFT_OUT
    assert len(runs) == len(RUNS) - LEFT_OUT
    assert {r["model"] for r in runs.values()} == {MODEL}
    for run in runs.values():
        if run["intervention"] == "ccs":
            assert run["pairs"] == 0 and run["accuracy"] is None
            assert run["stored_accuracy"] == CCS_ACCURACY
        else:
            assert run["accuracy"] == run["stored_accuracy"], run["upstream"]
    assert runs[("lora", "src_a", "tgt_b")]["accuracy"] == 8 / 12
    assert runs[("mms", "src_a", "tgt_b")]["accuracy"] == 4 / 12
    assert (
        runs[("zero_shot", "none", "tgt_b")]["upstream"]
        == "evaluations/zero_shot/llama-7b/tgt_b.json"
    )


def test_pairs_join_the_test_split(imported):
    runs = _runs(imported)
    pairs = expand_pairs(load_split(RawData(imported["data"]), "tgt_b", "test"))
    full = _predictions(imported, "lora", "src_a", "tgt_b")
    assert runs[("lora", "src_a", "tgt_b")]["matched"] == "all"
    assert full["example_id"] == pairs["example_id"].tolist()
    assert full["pair_index"] == pairs["pair_index"].tolist()
    assert full["dispreferred_response"] == pairs["dispreferred_response"].tolist()
    assert full["prob_preferred"] == RUNS["lora_fine_tuning/llama-7b-src_a/tgt_b.json"]
    # Cut to its first pairs: matched to our first pairs.
    first = _predictions(imported, "lat1", "src_a", "tgt_b")
    assert runs[("lat1", "src_a", "tgt_b")]["matched"] == "first"
    assert first["example_id"] == pairs["example_id"][:4].tolist()
    # Few-shot with dropped examples: no example id, but the pairs of each example are known.
    few = _predictions(imported, "few_shot", "src_a", "tgt_b")
    assert runs[("few_shot", "src_a", "tgt_b")]["matched"] == "none"
    assert few["example_id"] == [None] * 6
    assert few["preferred_response"] == [None] * 6
    assert few["pair_index"] == [0, 1, 0, 1, 0, 1]


def test_capabilities(imported):
    rows = {r["target"]: r for r in imported["tables"]["capabilities"].to_pylist()}
    assert set(rows) == {"tgt_b", "tgt_c"}  # unreleased targets are left out
    assert rows["tgt_b"]["capability_intervention"] == "lora"
    assert rows["tgt_b"]["upstream_intervention"] == "classify_lora"
    assert rows["tgt_c"]["target_reference"] == "ref_d"
    assert rows["tgt_c"]["capability"] == 0.9


def _cells(imported) -> dict[tuple[str, str], dict]:
    cells = published.published_cells(imported["tables"], imported["registry"], n_resamples=50)
    return {(c["intervention"], c["shift_id"]): c for c in cells.to_pylist()}


def test_cells_use_the_source_zero_shot_run_and_the_capability_file(imported):
    cells = _cells(imported)
    lora = cells[("lora", "src_a__tgt_b")]
    assert lora["model"] == MODEL
    assert lora["generalization_accuracy"] == 8 / 12
    # The zero-shot run stored under the source, not the base-model run (accuracy 1.0).
    assert lora["baseline_accuracy"] == 3 / 12
    assert (lora["capability"], lora["capability_intervention"]) == (0.8, "lora")
    assert lora["differential_elicitation"] == (8 / 12 - 3 / 12) / 0.8
    assert lora["source_id_accuracy"] == 1.0
    assert lora["id_target_accuracy"] == 1.0  # lora_fine_tuning/llama-7b-tgt_b/tgt_b.json
    assert lora["complete"] and lora["missing"] is None
    assert lora["pairs"] == 12 and lora["examples"] == 6
    zero = cells[("zero_shot", "src_a__tgt_b")]
    assert zero["generalization_accuracy"] == zero["baseline_accuracy"] == 3 / 12
    assert zero["differential_elicitation"] == 0.0
    # The capability table is keyed by the target (its value was measured on ref_d).
    assert cells[("lora", "src_a__tgt_c")]["capability"] == 0.9
    assert cells[("lora", "src_a__tgt_c")]["capability_intervention"] == "mms"


def test_cells_of_accuracy_only_and_unmatched_runs(imported):
    cells = _cells(imported)
    ccs = cells[("ccs", "src_a__tgt_b")]
    assert ccs["generalization_accuracy"] == CCS_ACCURACY
    assert ccs["differential_elicitation"] == (CCS_ACCURACY - 3 / 12) / 0.8
    assert ccs["pairs"] is None and ccs["generalization_low"] is None
    assert ccs["rms_calibration_error_genies"] is None
    # Unmatched few-shot pairs: the bootstrap still resamples their 3 examples.
    few = cells[("few_shot", "src_a__tgt_b")]
    assert (few["pairs"], few["examples"]) == (6, 3)
    assert few["generalization_accuracy"] == 4 / 6
    assert few["generalization_low"] <= 4 / 6 <= few["generalization_high"]
    # What is not published is named by its upstream file.
    mms = cells[("mms", "src_a__tgt_c")]
    assert not mms["complete"]
    assert "generalization: evaluations/mms/llama-7b-src_a/tgt_c.json" in mms["missing"]
    assert "id_target: evaluations/mms/llama-7b-ref_d/ref_d.json" in mms["missing"]


def test_configured_folder(tmp_path, caplog):
    assert published.configured_folder(None) is None
    with caplog.at_level(logging.WARNING):
        assert published.configured_folder(tmp_path / "absent") is None
    assert "published results not found" in caplog.text and "null" in caplog.text
    (tmp_path / "wrong").mkdir()
    with pytest.raises(ConfigError, match="evaluations"):
        published.configured_folder(tmp_path / "wrong")
    folder = write_published(tmp_path / "results")
    assert published.configured_folder(str(folder)) == folder


def test_database_sets_published_pairs_beside_ours(imported, tmp_path):
    """build_database adds the published runs; a per-example query joins them to ours."""
    data = imported["data"]
    shifts_file = tmp_path / "shifts.parquet"
    write_parquet(imported["registry"], shifts_file)
    pairs = expand_pairs(load_split(RawData(data), "tgt_b", "test"))
    ours = tmp_path / "ours.parquet"
    n = len(pairs["example_id"])
    write_parquet(
        predictions_table("tiny", "zero_shot", "none", "tgt_b", pairs, np.full(n, 0.6), np.ones(n)),
        ours,
    )
    database = tmp_path / "results.duckdb"
    build_database(
        database,
        shifts_file=shifts_file,
        data_files=[],
        predictions=read_predictions([ours]),
        run_files=[ours],
        capability_interventions=["zero_shot"],
        published_files=list(imported["paths"].values()),
    )
    con = duckdb.connect(str(database), read_only=True)
    try:
        beside = con.execute(
            """
            SELECT o.example_id, o.pair_index, o.prob_preferred AS ours,
                   p.prob_preferred AS published
            FROM predictions o
            JOIN predictions p USING (example_id, pair_index, eval)
            WHERE o.model = 'tiny' AND p.model = ? AND p.intervention = 'lora'
              AND p.train = 'src_a' AND o.eval = 'tgt_b'
            ORDER BY o.example_id, o.pair_index
            """,
            [MODEL],
        ).fetchall()
        models = {m for (m,) in con.execute("SELECT DISTINCT model FROM cells").fetchall()}
        runs = con.execute("SELECT count(*) FROM published_runs").fetchone()[0]
        table = con.execute(
            "SELECT avg_differential_elicitation FROM genies_table "
            "WHERE model = ? AND intervention = 'lora'",
            [MODEL],
        ).fetchone()
    finally:
        con.close()
    assert [r[3] for r in beside] == RUNS["lora_fine_tuning/llama-7b-src_a/tgt_b.json"]
    assert [r[0] for r in beside] == pairs["example_id"].tolist()
    assert models == {"tiny", MODEL}
    assert runs == len(RUNS) - LEFT_OUT
    assert table[0] is not None


# --- the real published runs ------------------------------------------------------------------

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_PUBLISHED = SHARED / "genies-published" / "results"
REAL_DATA = SHARED / "genies-data"
# Runs whose stored eval_accuracy disagrees with their own eval_probabilities (saturated
# bf16 zero-shot scores: upstream counted a few pairs correct whose stored probability is 0.0;
# which ones cannot be told from the file).
STORED_ACCURACY_DISAGREES = {
    "evaluations/few_shot/llama-13b-math_textbook/math_make_questions.json",
    "evaluations/few_shot/llama-13b-raven_matrices/raven_matrices.json",
    "evaluations/zero_shot/llama-13b-alpaca_hard/alpaca_hard.json",
}
# CSV column -> cell column; the accuracies, capability and DE are bit-exact.
EXACT = {
    "generalization_accuracy": "generalization_accuracy",
    "baseline_accuracy": "baseline_accuracy",
    "target_tuned_capability": "capability",
    "source_ID_accuracy": "source_id_accuracy",
    "differential_elicitation": "differential_elicitation",
}

real = pytest.mark.skipif(
    not (REAL_PUBLISHED.is_dir() and REAL_DATA.is_dir()),
    reason=f"needs the published runs and data in {SHARED}",
)


@pytest.fixture(scope="module")
def real_import(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    return _fidelity_check_module().import_runs(REAL_PUBLISHED, REAL_DATA, out, n_resamples=20)


def _csv_rows():
    for path in sorted((REAL_PUBLISHED / "generalization_metrics").glob("*/*/*.csv")):
        model, folder = path.parts[-3], path.parts[-2]
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                yield path, published.published_model(model), published.INTERVENTIONS[folder], row


@pytest.mark.published
@real
def test_real_runs_reproduce_their_stored_accuracy(real_import):
    runs = real_import[0]["runs"]
    disagree = {
        r["upstream"]
        for r in runs.to_pylist()
        if r["pairs"] and r["accuracy"] != r["stored_accuracy"]
    }
    assert disagree == STORED_ACCURACY_DISAGREES
    assert {m.removesuffix(published.SUFFIX) for m in runs.column("model").to_pylist()} == set(
        published.MODELS
    )


@pytest.mark.published
@real
def test_real_cells_reproduce_the_published_csvs(real_import):
    cells = {
        (c["model"], c["intervention"], c["source"], c["target"]): c
        for c in real_import[1].to_pylist()
    }
    runs = {
        (r["model"], r["intervention"], r["train"], r["eval"]): r
        for r in real_import[0]["runs"].to_pylist()
    }
    checked, differ = 0, []
    for path, model, intervention, row in _csv_rows():
        cell = cells[(model, intervention, row["source"], row["target"])]
        # The runs a row reads; a row that reads a run in STORED_ACCURACY_DISAGREES may differ.
        reads = {
            runs[(model, intervention, row["source"], row["target"])]["upstream"],
            runs[(model, intervention, row["source"], row["source"])]["upstream"],
        }
        for column, ours in EXACT.items():
            want, got = float(row[column]), cell[ours]
            if got != want:
                differ.append((path.name, model, intervention, row["source"], row["target"]))
                assert reads & STORED_ACCURACY_DISAGREES, (path, row, column, got)
        rms = row["RMS_calibration_error"]
        got_rms = cell["rms_calibration_error_genies"]
        if rms == "":
            assert got_rms is None
        else:
            assert math.isclose(got_rms, float(rms), rel_tol=0, abs_tol=1e-12), (path, row)
        name = row["target_tuned_capability_intervention"]
        assert cell["capability_intervention"] == published.CAPABILITY_NAMES[name]
        checked += 1
    assert checked == 2100
    # GENIES.csv and all.csv of llama-13b few_shot: raven_matrices -> us_history (source ID, in
    # both), raven_matrices -> code (source ID) and math_textbook -> math_make_questions.
    assert len(set(differ)) == 4


@pytest.mark.published
@real
def test_real_pairs_follow_our_pair_order(real_import):
    """openllama-3b's zero-shot probability falls with the preferred response's extra length
    (a summed log-probability): strongly in our pair order, not when shifted by one example."""
    table = real_import[0]["predictions"]
    mask = pc.and_(
        pc.equal(table.column("model"), "openllama-3b@published"),
        pc.equal(table.column("intervention"), "zero_shot"),
    )
    runs = table.filter(mask).to_pydict()
    raw = RawData(REAL_DATA)
    lengths, aligned, shifted = {}, [], []
    start = 0
    keys = list(zip(runs["train"], runs["eval"], strict=True))
    for i in range(1, len(keys) + 1):
        if i < len(keys) and keys[i] == keys[start]:
            continue
        eval_dataset = keys[start][1]
        if eval_dataset not in lengths:
            split = load_split(raw, eval_dataset, "test").to_pydict()
            lengths[eval_dataset] = dict(zip(split["example_id"], split["responses"], strict=True))
        texts = lengths[eval_dataset]
        rows = range(start, i)
        extra = np.array(
            [
                len(texts[runs["example_id"][r]][runs["dispreferred_response"][r]])
                - len(texts[runs["example_id"][r]][runs["preferred_response"][r]])
                for r in rows
            ]
        )
        p = np.array([runs["prob_preferred"][r] for r in rows])
        per_example = max(runs["pair_index"][r] for r in rows) + 1
        aligned.append((p, extra))
        shifted.append((np.roll(p, per_example), extra))
        start = i

    def spearman(parts):
        p = np.concatenate([a for a, _ in parts])
        x = np.concatenate([b for _, b in parts])
        ranks = [np.argsort(np.argsort(v, kind="stable")) for v in (p, x)]
        return float(np.corrcoef(*ranks)[0, 1])

    assert len(aligned) == 112
    assert spearman(aligned) > 0.4
    assert spearman(shifted) < spearman(aligned) - 0.3


def _fidelity_check_module():
    path = Path(__file__).resolve().parents[1] / "bench" / "check_paper_fidelity.py"
    spec = importlib.util.spec_from_file_location("check_paper_fidelity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.published
@real
def test_the_fidelity_section_matches_the_published_runs(real_import):
    # docs/fidelity.md, "Where the paper and its published data disagree": every figure is
    # recomputed from the published runs, so the section cannot drift from the data.
    check = _fidelity_check_module()
    loaded = check.frames(*real_import)
    expected = check.recompute(loaded, REAL_PUBLISHED, REAL_DATA)
    doc = check.DEFAULT_DOC.read_text()

    def subsets(paper):
        return check.subset_rows(loaded, paper)

    assert check.check(doc, expected, subsets) == []
    drifted = doc.replace("| mms | 0.865 |", "| mms | 0.866 |", 1)
    assert drifted != doc
    assert check.check(drifted, expected, subsets)
