"""The intervention registry is the one list of interventions: everything else agrees with it."""

import re

import pytest

from genies.methods import probes
from genies.methods.tuned import reward_model, training
from genies.pipeline import interventions as registry
from genies.pipeline.config import load_schema

from .workflow import REPO


def test_schema_lists_exactly_the_registry():
    schema = load_schema()
    names = schema["properties"]["interventions"]["properties"]
    assert list(names) == list(registry.REGISTRY)
    # any other name is a reward model of the user's own, of a kind the registry makes rows of
    own = schema["$defs"]["own_reward_model"]
    assert own["properties"]["kind"]["enum"] == list(registry.CONFIG_FAMILIES)
    kinds = [branch["if"]["properties"]["kind"]["const"] for branch in own["allOf"]]
    assert kinds == list(registry.CONFIG_FAMILIES)


def test_family_modules_derive_their_methods_from_the_registry():
    assert set(probes.METHODS) == set(registry.of_family("probe"))
    for name, method in probes.METHODS.items():
        entry = registry.get(name)
        assert (method.stimulus, method.tensor, method.rule) == (
            entry.stimulus,
            entry.unit,
            entry.rule,
        )
    assert reward_model.METHODS == tuple(registry.of_family("tuned"))
    assert (
        training.resolve_params("prompt_tuning")["lr"]
        == registry.get("prompt_tuning").defaults["lr"]
    )
    assert probes.method_params("mms")["n_units"] == 16


def test_every_family_names_rules_that_exist():
    rule_text = "\n".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    defined = set(re.findall(r"^rule (\w+):", rule_text, flags=re.M))
    for family, rules in registry.FAMILY_RULES.items():
        assert set(rules) <= defined, (family, rules)
    assert set(registry.CONFIG_FAMILIES) <= set(registry.FAMILY_RULES)


def test_probe_rows_say_what_they_read_and_others_do_not():
    for entry in registry.REGISTRY.values():
        fields = (entry.stimulus, entry.unit, entry.rule)
        if entry.family == "probe":
            assert None not in fields
        else:
            assert fields == (None, None, None)


def test_config_entries_of_a_kind_become_untrained_rows():
    config = {
        "models": {"base": {}, "rm": {}, "policy": {}},
        "run_models": ["base"],
        "interventions": {
            "zero_shot": {},
            "mine": {"kind": "reward_model", "model": "rm"},
            "my_dpo": {"kind": "dpo", "policy": "policy", "reference": "base", "beta": 0.5},
        },
    }
    rows = registry.configured(config)
    assert list(rows) == ["zero_shot", "mine", "my_dpo"]
    assert rows["zero_shot"] is registry.REGISTRY["zero_shot"]
    mine, dpo = rows["mine"], rows["my_dpo"]
    assert (mine.family, mine.trains, mine.base, mine.reads) == (
        "reward_model",
        False,
        "base",
        ("rm",),
    )
    assert (dpo.family, dpo.base, dpo.reads) == ("dpo", "base", ("policy", "base"))
    assert dpo.defaults["beta"] == 0.1 and dpo.rules == ("forward", "predict_dpo")
    # built-in names stay the registry's; the user's are not in it
    assert "mine" not in registry.REGISTRY and registry.untrained() == ("zero_shot", "random")


def test_unknown_names_are_reported_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown intervention 'mmss'; known: zero_shot"):
        registry.get("mmss")
    assert registry.untrained() == ("zero_shot", "random")
