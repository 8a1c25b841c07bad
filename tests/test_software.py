"""The package versions that are params of the rules (genies.pipeline.software); what an upgrade
really reruns is checked end to end in tests/test_workflow_caps.py."""

from __future__ import annotations

import importlib.metadata
import re

import pytest

from genies.pipeline.software import RULE_PACKAGES, job_versions

from .workflow import REPO

# Rules that read a prepared model but compute nothing with it.
MODEL_READERS = {"report_tables"}


def installed(name):
    return importlib.metadata.version(name)


def test_model_jobs_depend_on_torch_transformers_and_tokenizers():
    for rule in ("forward", "score_few_shot", "score_reward_model"):
        assert job_versions(rule) == {
            name: installed(name) for name in ("torch", "transformers", "tokenizers")
        }
    assert job_versions("tune")["peft"] == installed("peft")
    assert (
        job_versions("fit_probe") == job_versions("predict_probe") == {"torch": installed("torch")}
    )


def test_preparation_and_training_add_what_their_source_and_quantization_read():
    assert "gguf" in job_versions("prepare_model", spec={"source": "smollm2"})
    assert "gguf" not in job_versions("prepare_model", spec={"source": "tiny"})
    # a linked model is only validated: no package changes it
    assert job_versions("prepare_model", spec={"source": "local", "link": True}) == {}
    assert "bitsandbytes" in job_versions("tune", params={"quantization": "nf4"})
    assert "bitsandbytes" not in job_versions("tune", params={})


def test_unknown_rule():
    with pytest.raises(ValueError, match="no versions for rule 'forwrd'"):
        job_versions("forwrd")


def rule_blocks():
    """Rule name -> its text (to the next rule or the end of its file), from every rule file."""
    blocks = {}
    for path in sorted((REPO / "rules").glob("*.smk")):
        parts = re.split(r"^ *rule (\w+):\n", path.read_text(), flags=re.M)
        blocks.update(zip(parts[1::2], parts[2::2], strict=True))
    return blocks


def test_every_rule_that_computes_with_a_model_has_its_versions_param():
    blocks = rule_blocks()
    for rule in RULE_PACKAGES:
        assert re.search(rf'versions=.*job_versions\(\s*"{rule}"', blocks[rule]), rule
    reads_a_model = {name for name, block in blocks.items() if "MODEL_DIR" in block}
    assert reads_a_model - MODEL_READERS <= set(RULE_PACKAGES), reads_a_model
