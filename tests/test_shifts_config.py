import json
import logging
from pathlib import Path

import pytest

from genies.config import load_config, validate_config
from genies.errors import ConfigError, DataError
from genies.plan import Plan
from genies.shifts import load_shifts, shifts_table

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


def test_shifts_table(folder):
    shifts = load_shifts("genies", folder)
    table = shifts_table(shifts, [("src_a", "tgt_b")])
    assert table.column("in_genies").to_pylist() == [True, False]
    assert table.column("target_reference").to_pylist() == ["tgt_b", "ref_d"]


def test_config_defaults_and_errors(folder):
    config = validate_config(
        {"data_dir": str(folder), "models": {"m": {"source": "tiny"}}, "run_models": ["m"]}
    )
    assert config["shifts"] == "genies"
    assert config["scoring"]["normalisation"] == "sum"
    assert config["caps"] == {"train_examples": None, "test_examples": None}
    assert config["capability_interventions"] == ["zero_shot"]
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


@pytest.mark.skipif(not REAL.exists(), reason="real GENIES data not beside the project")
def test_real_shift_sets():
    assert len(load_shifts("genies", REAL)) == 15
    assert len(load_shifts("all", REAL)) == 56
    assert len(load_shifts("extreme", REAL)) + len(load_shifts("probing", REAL)) == 56
    assert all(s.label for s in load_shifts("all", REAL))
