"""LLaMA-1 folders whose tokenizer is only a sentencepiece tokenizer.model: preparation converts
it once (genies.models.sentencepiece_tokenizer), and every job loads the tokenizer.json, which
tokenizes as sentencepiece does (transformers 5's own conversion does not)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import sentencepiece
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from genies.models import sentencepiece_tokenizer
from genies.models.loading import LINK_FILE, MODEL_INFO_FILE, ModelError, load_model
from genies.models.prepare import prepare_model
from genies.versions import VersionError

from .fixtures import llama1_dir

SHARED = Path(__file__).resolve().parent.parent.parent / "shared/genies-data"
# Texts that begin with a space are where transformers 5's LlamaTokenizer and sentencepiece part.
TEXTS = [" Sure, here it is.", "The river 12 stone.", "  the a of", "\n### Response:\n", "x "]


@pytest.fixture(scope="module")
def llama1(tmp_path_factory):
    return llama1_dir(tmp_path_factory.mktemp("llama1") / "llama-1")


@pytest.fixture(scope="module")
def reference(llama1):
    return sentencepiece.SentencePieceProcessor(model_file=str(llama1 / "tokenizer.model"))


def ids(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_transformers_own_conversion_differs_from_sentencepiece(llama1, reference):
    """What the conversion fixes: transformers 5 drops the dummy prefix of a leading space."""
    plain = AutoTokenizer.from_pretrained(llama1)
    assert type(plain).__name__ == "LlamaTokenizer"
    assert ids(plain, TEXTS[:1]) != [reference.encode(TEXTS[0])]


@pytest.mark.parametrize("link", [False, True])
def test_a_prepared_llama1_tokenizes_as_sentencepiece(llama1, reference, tmp_path, link):
    out = tmp_path / "prepared"
    prepare_model({"source": "local", "path": str(llama1), "link": link}, out)
    files = sorted(p.name for p in out.iterdir())
    assert "tokenizer.json" in files and "tokenizer.model" not in files, files
    if link:  # the weights stay where they are; the converted tokenizer sits beside the link
        assert {LINK_FILE, MODEL_INFO_FILE} <= set(files) and not any(
            f.endswith(".safetensors") for f in files
        )
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] != "LlamaTokenizer"  # loading keeps the file's pipeline
    # the tokenizers library alone reads it: no sentencepiece, no protobuf
    alone = Tokenizer.from_file(str(out / "tokenizer.json"))
    expected = [reference.encode(t) for t in TEXTS]
    assert [alone.encode(t, add_special_tokens=False).ids for t in TEXTS] == expected
    loaded = load_model(out, device="cpu", dtype="float32")
    assert ids(loaded.tokenizer, TEXTS) == expected
    assert loaded.tokenizer("Hello")["input_ids"][0] == reference.bos_id() == 1
    assert loaded.tokenizer.eos_token_id == reference.eos_id()
    assert loaded.tokenizer.model_max_length == 2048


def test_a_linked_llama1_prepared_before_the_conversion_says_to_prepare_again(llama1, tmp_path):
    out = tmp_path / "old"
    prepare_model({"source": "local", "path": str(llama1), "link": True}, out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).unlink()
    with pytest.raises(ModelError, match="only a sentencepiece tokenizer.model.*prepare the"):
        load_model(out, device="cpu", dtype="float32")


def test_a_conversion_that_disagrees_with_sentencepiece_is_refused(llama1, tmp_path, monkeypatch):
    # "<s>" is a special token to the fast tokenizer and three characters to sentencepiece
    probes = (*sentencepiece_tokenizer.PROBE_TEXTS, "a <s> b")
    monkeypatch.setattr(sentencepiece_tokenizer, "PROBE_TEXTS", probes)
    with pytest.raises(ModelError, match=r"tokenizes 'a <s> b' as .* sentencepiece gives"):
        prepare_model({"source": "local", "path": str(llama1), "link": True}, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_converting_needs_sentencepiece_and_protobuf(llama1, tmp_path, monkeypatch):
    from genies import versions

    real = versions.installed
    monkeypatch.setattr(versions, "installed", lambda p: None if p == "protobuf" else real(p))
    with pytest.raises(VersionError, match=r"protobuf is not installed .*pip install"):
        prepare_model({"source": "local", "path": str(llama1), "link": True}, tmp_path / "m")


@pytest.mark.published
def test_the_genies_texts_tokenize_as_sentencepiece(llama1, reference, tmp_path):
    """Every 10th prompt and response of the GENIES test splits (the research behind this
    found 103 of 11,040 such texts tokenised differently by transformers' own conversion)."""
    if not SHARED.is_dir():
        pytest.skip(f"no GENIES data at {SHARED}")
    prepare_model({"source": "local", "path": str(llama1), "link": True}, tmp_path / "m")
    converted = load_model(tmp_path / "m", device="cpu", dtype="float32").tokenizer
    texts = []
    for path in sorted(SHARED.glob("distributions/*/test.json")):
        for example in json.loads(path.read_text())[::10]:
            texts += [example["prompt"], *example["responses"]]
    texts = [t for t in texts if "<s>" not in t and "</s>" not in t]
    assert len(texts) > 1000 and sum(t.startswith(" ") for t in texts) > 10
    sample = random.Random(0).sample(texts, 1000) + [t for t in texts if t.startswith(" ")]
    bad = [t for t in sample if ids(converted, [t])[0] != reference.encode(t)]
    assert not bad, bad[:3]
