"""Every parameter is checked before any job runs (`genies.pipeline.config.check_config`): an
intervention's against its registry row's declarations, a model entry's keys against its
source's, a local model's directory. One test per rule; each message names the entry, the key
and what it takes."""

from __future__ import annotations

import logging
import re

import pytest

from genies.errors import ConfigError
from genies.methods import probes
from genies.methods.tuned import training
from genies.models import sources, tiny
from genies.pipeline import interventions as registry
from genies.pipeline.config import load_schema, validate_config

from .fixtures import workflow_config


def check(tmp_path, interventions=None, models=None, **overrides):
    config = workflow_config(tmp_path / "data", **overrides)
    config["interventions"] = {"zero_shot": {}, **(interventions or {})}
    config["models"] = {**config["models"], **(models or {})}
    return validate_config(config)


def rejects(tmp_path, message, **entries):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check(tmp_path, **entries)


# ------------------------------------------------------------------ intervention parameters


def test_an_unknown_parameter_names_the_entry_and_the_known_ones(tmp_path):
    rejects(
        tmp_path,
        "interventions/mms: unknown parameter 'n_unit'; mms takes calibration_l2, n_units, "
        "probe_c, probe_max_iter, probe_precision, train_fraction",
        interventions={"mms": {"n_unit": 4}},
    )


def test_an_intervention_without_parameters_takes_none(tmp_path):
    rejects(
        tmp_path,
        "interventions/random: unknown parameter 'sed'; random takes no parameters (its seed "
        "is the config's `seed`)",
        interventions={"random": {"sed": 3}},
    )


@pytest.mark.parametrize("value", [-3, 0])
def test_an_integer_below_its_minimum(tmp_path, value):
    # -3 selected 5 of 8 heads by negative slicing; 0 failed late with NaN probabilities
    rejects(
        tmp_path,
        f"interventions/mms/n_units: {value} is not allowed; n_units takes an integer >= 1 "
        "(default 16",
        interventions={"mms": {"n_units": value}},
    )


@pytest.mark.parametrize("value", [2.5, "16", True, None])
def test_a_value_of_another_type(tmp_path, value):
    with pytest.raises(ConfigError, match="interventions/lat1/n_units: .* is not allowed"):
        check(tmp_path, interventions={"lat1": {"n_units": value}})


def test_an_open_interval_excludes_its_ends(tmp_path):
    for value in (0, 1, 1.0):
        rejects(
            tmp_path,
            "train_fraction takes a number > 0 and < 1",
            interventions={"cra": {"train_fraction": value}},
        )
    check(tmp_path, interventions={"cra": {"train_fraction": 0.5}})


def test_a_choice_must_be_one_of_its_values(tmp_path):
    rejects(
        tmp_path,
        "interventions/ccs/centre: 'target' is not allowed; centre takes one of 'source', 'eval'",
        interventions={"ccs": {"centre": "target"}},
    )
    # true is not 1, nor 1 true
    rejects(
        tmp_path,
        "gradient_checkpointing: 1 is not allowed; gradient_checkpointing takes one of true, "
        "false, 'auto'",
        interventions={"lora": {"gradient_checkpointing": 1}},
    )


def test_null_only_where_declared(tmp_path):
    check(tmp_path, interventions={"lora": {"micro_batch_size": None, "max_length": None}})
    rejects(
        tmp_path,
        "interventions/lora/steps: null is not allowed",
        interventions={"lora": {"steps": None}},
    )


def test_a_string_must_match_its_pattern(tmp_path):
    check(tmp_path, interventions={"prompt_tuning": {"device": "cuda:1"}})
    rejects(
        tmp_path,
        "interventions/prompt_tuning/device: 'gpu' is not allowed; device takes a string "
        "matching auto|cpu|cuda(:[0-9]+)?",
        interventions={"prompt_tuning": {"device": "gpu"}},
    )


def test_a_list_of_strings(tmp_path):
    check(tmp_path, interventions={"lora": {"target_modules": ["q_proj", "v_proj"]}})
    rejects(
        tmp_path,
        "target_modules takes null or a string or a list of strings",
        interventions={"lora": {"target_modules": ["q_proj", 3]}},
    )


def test_a_number_written_as_yaml_reads_it_as_a_string(tmp_path):
    rejects(
        tmp_path,
        "interventions/ccs/lr: '1e-3' is not allowed; lr takes a number > 0 (default 0.001: "
        "AdamW learning rate); YAML reads 1e-3 as a string: write 1.0e-3",
        interventions={"ccs": {"lr": "1e-3"}},
    )
    rejects(
        tmp_path,
        "interventions/mms/n_units: '-3' is not allowed; n_units takes an integer >= 1 (default "
        "16: units (heads or layers) kept, the best by validation accuracy; at most all); it is "
        "a string: write the number without quotes",
        interventions={"mms": {"n_units": "-3"}},
    )


def test_an_upper_bound(tmp_path):
    # demonstrations kept are counted in an int8
    rejects(
        tmp_path,
        "interventions/few_shot/n_shots: 128 is not allowed; n_shots takes an integer >= 1 and "
        "<= 127",
        interventions={"few_shot": {"n_shots": 128}},
    )


def test_a_reward_model_of_your_own_has_its_parameters_checked_too(tmp_path):
    models = {"policy": {"source": "tiny", "seed": 1}}
    dpo = {"kind": "dpo", "policy": "policy", "reference": "tiny"}
    assert check(tmp_path, {"mine": {**dpo, "beta": 0.5}}, models)["interventions"]["mine"]
    rejects(
        tmp_path,
        "interventions/mine/beta: 0 is not allowed; beta takes a number > 0",
        interventions={"mine": {**dpo, "beta": 0}},
        models=models,
    )


def test_the_jobs_read_the_same_declarations(tmp_path):
    # the defaults the jobs run with are the registry's, and the jobs check what they are given
    assert probes.method_params("lat2") == registry.get("lat2").defaults
    assert training.resolve_params("prompt_tuning") == {
        **registry.get("prompt_tuning").defaults,
        "method": "prompt_tuning",
    }
    assert registry.get("prompt_tuning").defaults["lr"] == 0.0052  # the row's own default
    assert registry.get("lora").defaults["lr"] == 2e-4
    with pytest.raises(ConfigError, match="interventions/mms/n_units: 0 is not allowed"):
        probes.method_params("mms", {"n_units": 0})
    with pytest.raises(ConfigError, match="interventions/lora/lora_r: 0 is not allowed"):
        training.resolve_params("lora", {"lora_r": 0})
    for entry in registry.REGISTRY.values():
        for name, param in entry.params.items():
            assert param.doc and param.accepts(param.default), (entry.name, name)


# ------------------------------------------------------------------------------ model entries


def test_an_unknown_model_key_names_the_keys_of_its_source(tmp_path):
    for typo in ("num_layer", "chat_templte"):
        rejects(
            tmp_path,
            f"models/tiny: unknown key '{typo}' for source tiny; a tiny entry takes source, "
            "chat_template, params_b, gpus, gpu_model, seed, hidden_size, num_layers",
            models={"tiny": {"source": "tiny", typo: 2}},
        )


def test_a_key_of_another_source(tmp_path):
    rejects(
        tmp_path,
        "models/tiny: unknown key 'path' for source tiny (path is a key of source local)",
        models={"tiny": {"source": "tiny", "path": "/models/x"}},
    )


def test_a_hub_entry_takes_repo_revision_and_link_only(tmp_path):
    rejects(
        tmp_path,
        "models/llama: unknown key 'path' for source hf (path is a key of source local); a hf "
        "entry takes source, chat_template, params_b, gpus, gpu_model, repo, revision, link",
        models={"llama": {"source": "hf", "repo": "o/llama", "path": "/models/x"}},
    )
    rejects(
        tmp_path,
        "models/smol: unknown key 'revision' for source smollm2 (revision is a key of source hf)",
        models={"smol": {"source": "smollm2", "revision": "main"}},
    )


def test_tiny_dimensions_that_do_not_divide(tmp_path):
    # accepted before, the prepare_model job then failed building the model
    rejects(
        tmp_path,
        "models/tiny: tiny model: hidden_size 64 is not divisible by num_heads 5",
        models={"tiny": {"source": "tiny", "hidden_size": 64, "num_heads": 5}},
    )
    rejects(
        tmp_path,
        f"models/tiny: tiny model: vocab_size must be >= {tiny.MIN_VOCAB_SIZE}",
        models={"tiny": {"source": "tiny", "vocab_size": 100}},
    )
    # the torch-free check's vocabulary floor is the tiny tokenizer's
    assert sources.TINY_MIN_VOCAB_SIZE == 256 + len(tiny.SPECIAL_TOKENS)


def test_a_missing_relative_local_path_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rejects(
        tmp_path,
        f"models/tiny/path: local model path {tmp_path / 'models/llama'} is not a directory "
        f"(from the working directory {tmp_path})",
        models={"tiny": {"source": "local", "path": "models/llama"}},
    )


def test_a_missing_absolute_local_path_is_checked_on_the_node(tmp_path, caplog):
    path = tmp_path / "on-the-nodes-only"
    with caplog.at_level(logging.WARNING):
        check(tmp_path, models={"tiny": {"source": "local", "path": str(path)}})
    assert f"models/tiny/path: {path} does not exist on this host" in caplog.text
    assert "the prepare_model job checks it where it runs" in caplog.text


def test_a_visible_local_path_must_be_a_model_directory(tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"")
    rejects(
        tmp_path,
        f"models/tiny/path: local model directory {folder} has no *.safetensors weights",
        models={"tiny": {"source": "local", "path": str(folder)}},
    )


def test_a_model_the_run_does_not_use_is_not_looked_for(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        check(tmp_path, models={"unused": {"source": "local", "path": "nowhere"}})
    assert "nowhere" not in caplog.text
    rejects(  # its keys are checked all the same
        tmp_path,
        "models/unused: unknown key 'seed' for source local",
        models={"unused": {"source": "local", "path": "nowhere", "seed": 1}},
    )


def test_the_schema_and_the_source_table_agree():
    entry = load_schema()["properties"]["models"]["additionalProperties"]
    assert entry["properties"]["source"]["enum"] == list(sources.SOURCE_KEYS)
    declared = {*sources.COMMON_KEYS, *(k for keys in sources.SOURCE_KEYS.values() for k in keys)}
    assert set(entry["properties"]) == declared
    own = load_schema()["$defs"]["own_reward_model"]["allOf"]
    for branch, family in zip(own, registry.CONFIG_FAMILIES.values(), strict=True):
        assert set(branch["then"]["properties"]) == {*family.keys, *family.params}
