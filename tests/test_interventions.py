"""The intervention registry is the one list of interventions: everything else agrees with it."""

import re

import pytest

from genies import interventions as registry
from genies import probes, reward_model, training
from genies.config import load_schema

from .workflow import REPO


def test_schema_lists_exactly_the_registry():
    names = load_schema()["properties"]["interventions"]["propertyNames"]["enum"]
    assert names == list(registry.REGISTRY)


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
    for entry in registry.REGISTRY.values():
        assert set(entry.rules) <= defined, (entry.name, entry.rules)


def test_probe_rows_say_what_they_read_and_others_do_not():
    for entry in registry.REGISTRY.values():
        fields = (entry.stimulus, entry.unit, entry.rule)
        if entry.family == "probe":
            assert None not in fields
        else:
            assert fields == (None, None, None)


def test_unknown_names_are_reported_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown intervention 'mmss'; known: zero_shot"):
        registry.get("mmss")
    assert registry.untrained() == ("zero_shot", "random")
