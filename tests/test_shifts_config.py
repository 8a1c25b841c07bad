import json
import logging
from pathlib import Path

import pytest

from genies.data.shifts import (
    REGISTRY_SCHEMA,
    configured_rows,
    load_shifts,
    shift_sets,
    shifts_table,
)
from genies.errors import ConfigError, DataError
from genies.pipeline.config import load_config, validate_config
from genies.pipeline.plan import Plan

from .fixtures import make_genies_folder, workflow_config

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "genies-data"


@pytest.fixture
def folder(tmp_path):
    return make_genies_folder(tmp_path / "genies")


def test_named_sets_and_labels(folder, caplog):
    genies = load_shifts("genies", folder)
    assert [(s.source, s.target, s.target_reference) for s in genies] == [
        ("src_a", "tgt_b", "tgt_b"),
        ("src_a", "tgt_c", "ref_d"),
    ]
    with caplog.at_level(logging.WARNING):
        every = load_shifts("all", folder)
    assert len(every) == 2
    assert "repeats shift src_a -> tgt_c" in caplog.text
    # all.json has no labels: they come from the category files.
    assert [(s.label, s.category) for s in every] == [
        ("extreme", "skill"),
        ("probing", "unwanted_personas"),
    ]
    assert [s.target for s in load_shifts("extreme", folder)] == ["tgt_b"]
    assert [s.target for s in load_shifts("probing", folder)] == ["tgt_c"]


def test_user_shift_file(folder, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([{"source": "tgt_b", "target": "src_a"}]))
    (shift,) = load_shifts(str(path), folder, ["src_a", "tgt_b"])
    assert shift.target_reference == "src_a" and shift.shift_id == "tgt_b__src_a"


def test_unknown_dataset_in_shift_file(folder, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps([{"source": "src_a", "target": "tgt_b"}, {"source": "src_a", "target": "nope"}])
    )
    with pytest.raises(
        DataError, match=r"mine.json, record 1, field 'target': unknown dataset 'nope'"
    ):
        load_shifts(str(path), folder, ["src_a", "tgt_b"])


def test_malformed_shift_file(folder, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text("[{")
    with pytest.raises(DataError, match="mine.json: malformed JSON"):
        load_shifts(str(path), folder)
    path.write_text(json.dumps([{"target": "x"}]))
    with pytest.raises(DataError, match="record 0, field 'source'"):
        load_shifts(str(path), folder)


def test_unknown_shift_set(folder):
    with pytest.raises(ConfigError, match="unknown shift set 'everything'"):
        load_shifts("everything", folder)


def test_shifts_table(folder, tmp_path):
    sets = shift_sets(folder)
    assert {name: [s.shift_id for s in set_] for name, set_ in sets.items()} == {
        "genies": ["src_a__tgt_b", "src_a__tgt_c"],
        "extreme": ["src_a__tgt_b"],
        "probing": ["src_a__tgt_c"],
        "all": ["src_a__tgt_b", "src_a__tgt_c"],
    }
    # A user's shift: configured, in no set; then the sets' shifts that are not configured.
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([{"source": "tgt_b", "target": "src_a"}]))
    mine = load_shifts(str(path), folder)
    table = shifts_table([*mine, *load_shifts("genies", folder)[1:]], sets)
    assert table.schema == REGISTRY_SCHEMA
    assert table.to_pylist() == [
        {
            "shift_index": 0,
            "shift_id": "tgt_b__src_a",
            "source": "tgt_b",
            "target": "src_a",
            "target_reference": "src_a",
            "label": None,
            "category": None,
            "configured": True,
            "in_genies": False,
            "in_extreme_set": False,
            "in_probing_set": False,
        },
        {
            "shift_index": 1,
            "shift_id": "src_a__tgt_c",
            "source": "src_a",
            "target": "tgt_c",
            "target_reference": "ref_d",
            "label": "probing",
            "category": "unwanted_personas",
            "configured": True,
            "in_genies": True,
            "in_extreme_set": False,
            "in_probing_set": True,
        },
        {
            "shift_index": 2,
            "shift_id": "src_a__tgt_b",
            "source": "src_a",
            "target": "tgt_b",
            "target_reference": "tgt_b",
            "label": "extreme",
            "category": "skill",
            "configured": False,
            "in_genies": True,
            "in_extreme_set": True,
            "in_probing_set": False,
        },
    ]
    assert configured_rows(table).column("shift_id").to_pylist() == [
        "tgt_b__src_a",
        "src_a__tgt_c",
    ]
    # A data folder without the category files: those sets are empty.
    for name in ("extreme", "probing"):
        (folder / "distribution_shifts" / name / "all.json").unlink()
    assert shift_sets(folder)["extreme"] == shift_sets(folder)["probing"] == []


def test_config_defaults_and_errors(folder):
    minimal = {"data_dir": str(folder), "models": {"m": {"source": "tiny"}}, "run_models": ["m"]}
    # No silent zero-shot capability: without lora the capability must be named.
    with pytest.raises(ConfigError, match="capability_interventions is not set and lora is not"):
        validate_config(minimal)
    config = validate_config({**minimal, "capability_interventions": ["zero_shot"]})
    assert config["shifts"] == "genies"
    assert config["scoring"]["normalisation"] == "sum"
    assert config["caps"] == {"train_examples": None, "test_examples": None}
    assert config["capability_interventions"] == ["zero_shot"]
    with_lora = validate_config({**minimal, "interventions": {"zero_shot": {}, "lora": {}}})
    assert with_lora["capability_interventions"] == ["lora"]
    config["capability_interventions"] = ["lora"]
    with pytest.raises(ConfigError, match="capability_interventions names \\['lora'\\]"):
        validate_config({**config, "interventions": {"zero_shot": {}}})
    with pytest.raises(ConfigError, match="must include zero_shot"):
        validate_config({**config, "interventions": {"lora": {}}})
    config["capability_interventions"] = ["zero_shot"]
    with pytest.raises(ConfigError, match="run_models names \\['other'\\]"):
        validate_config({**config, "run_models": ["other"]})
    with pytest.raises(ConfigError, match="scoring/normalisation"):
        validate_config({**config, "scoring": {"normalisation": "median"}})
    with pytest.raises(ConfigError, match="models/m/source"):
        validate_config({**config, "models": {"m": {"source": "hub"}}})
    with pytest.raises(ConfigError, match="'path' is a required property"):
        validate_config({**config, "models": {"m": {"source": "local"}}})
    with pytest.raises(ConfigError, match="'repo' is a required property"):
        validate_config({**config, "models": {"m": {"source": "hf", "revision": "main"}}})
    with pytest.raises(ConfigError, match="models/m/repo"):
        validate_config({**config, "models": {"m": {"source": "hf", "repo": "a/b/c"}}})
    hub = {"source": "hf", "repo": "org/model-1.5", "revision": "v1", "link": True}
    assert validate_config({**config, "models": {"m": hub}})["models"]["m"] == hub
    with pytest.raises(ConfigError, match="does not match"):
        validate_config(
            {**config, "models": {"../evil": {"source": "tiny"}}, "run_models": ["../evil"]}
        )


def test_embedded_configs_are_valid():
    root = Path(__file__).resolve().parent.parent
    for path in (root / "config.yaml", root / "config" / "paper.yaml"):
        assert load_config(path)["run_models"]


def test_plan_paths(folder):
    plan = Plan(validate_config(workflow_config(folder)))
    assert plan.datasets == ["ref_d", "src_a", "tgt_b", "tgt_c"]
    assert "results/predictions/tiny/zero_shot/none/tgt_c.parquet" in plan.prediction_files()
    assert plan.raw_input("src_a", "train").endswith("distributions/src_a/train.json")
    assert [s.shift_id for s in plan.shift_sets["probing"]] == ["src_a__tgt_c"]


def test_plan_trains_on_sources_and_target_references_only(folder):
    """ID target accuracy is on the target reference: no training on tgt_c, whose reference
    is ref_d (as the paper keeps sycophancy_mimicry and alpaca_long out of training)."""
    interventions = {"zero_shot": {}, "mms": {}, "lora": {}}
    plan = Plan(validate_config(workflow_config(folder, interventions=interventions)))
    expected = [
        ("src_a", "tgt_b"),  # generalisation
        ("src_a", "src_a"),  # source ID
        ("tgt_b", "tgt_b"),  # ID target (tgt_b is its own reference); lora: also capability
        ("src_a", "tgt_c"),
        ("ref_d", "ref_d"),  # ID target on the reference; lora: also capability
    ]
    assert plan.train_eval_pairs("mms") == expected
    plan = Plan(
        validate_config(
            workflow_config(folder, interventions=interventions, capability_interventions=["lora"])
        )
    )
    assert plan.train_eval_pairs("lora") == expected
    assert plan.train_eval_pairs("zero_shot") == [
        ("none", d) for d in ("tgt_b", "src_a", "tgt_c", "ref_d")
    ]


@pytest.mark.skipif(not REAL.exists(), reason="real GENIES data not beside the project")
def test_real_shift_sets():
    assert len(load_shifts("genies", REAL)) == 15
    assert len(load_shifts("all", REAL)) == 56
    assert len(load_shifts("extreme", REAL)) + len(load_shifts("probing", REAL)) == 56
    assert all(s.label for s in load_shifts("all", REAL))
    # The GENIES table's sets: 15 GENIES shifts, 37 extreme, 19 distinct probing pairs (of
    # probing/all.json's 32 entries); every shift known to the registry, GENIES ones first.
    table = shifts_table(load_shifts("genies", REAL), shift_sets(REAL))
    assert table.num_rows == 56
    rows = table.to_pylist()
    assert sum(r["configured"] for r in rows) == sum(r["in_genies"] for r in rows) == 15
    assert sum(r["in_extreme_set"] for r in rows) == 37
    assert sum(r["in_probing_set"] for r in rows) == 19
    assert all(r["in_extreme_set"] != r["in_probing_set"] for r in rows)
    # GENIES.json labels it extreme; probing/all.json lists it, which decides.
    long = next(r for r in rows if r["shift_id"] == "alpaca_short__alpaca_long")
    assert long["label"] == "extreme" and long["in_probing_set"] and not long["in_extreme_set"]
    assert long["target_reference"] == "alpaca_mmlu"
