"""A model folder whose tokenizer is only a sentencepiece ``tokenizer.model`` (LLaMA-1 checkpoints
converted without tokenizer.json) gets a ``tokenizer.json`` once, when the model is prepared
(`genies.models.prepare`); every job then loads that file with the tokenizers library alone.

Converting needs sentencepiece and protobuf. transformers 5's converted LlamaTokenizer differs
from sentencepiece (Meta's tokenizer) on texts that begin with a space: its Metaspace
pre-tokenizer (``prepend_scheme="first"``) drops sentencepiece's dummy prefix there (103 of
11,040 GENIES texts). The converted tokenizer uses the pipeline Meta's checkpoints ship in their
tokenizer.json instead (always prepend "▁", spaces to "▁", no pre-tokenizer) and is saved as a
plain fast tokenizer, so that loading it does not rebuild the Llama pipeline. Before it is kept,
its ids are compared with sentencepiece's on `PROBE_TEXTS`; any difference is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

from genies.models.loading import SENTENCEPIECE_FILE, ModelError
from genies.versions import check_versions

# Texts whose ids must equal sentencepiece's: leading, repeated and trailing spaces, line
# breaks, tabs, digits, accents, CJK and emoji (byte fallback), the GENIES prompt layouts.
PROBE_TEXTS = (
    "Hello world",
    " Hello world",
    "  two leading spaces",
    "trailing space ",
    "a  b   c",
    "\nstarts with a line break",
    " \n mixed",
    "tab\tseparated",
    "12345 67.89",
    "café naïve 東京 🙂",
    "### Instruction:\nWrite about apples.\n\n### Response:\n",
    "Human: What is the capital of France?\n\nAssistant: Paris.",
    " ",
    "",
)


def convert_sentencepiece(src, out):
    """Write the tokenizer of `src` (`genies.models.loading.sentencepiece_only`) into `out` as
    a tokenizer.json that tokenizes as sentencepiece does; return it, loaded from `out`.
    Raises `ModelError` when the converted tokenizer and sentencepiece disagree on a probe
    text."""
    check_versions(("sentencepiece", "protobuf"))
    import sentencepiece
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    src, out = Path(src), Path(out)
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    if type(tokenizer).__name__.startswith("Llama"):
        backend = tokenizer.backend_tokenizer
        backend.normalizer = normalizers.Sequence(
            [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
        )
        backend.pre_tokenizer = None
    tokenizer.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # keep the file's pipeline on load
    config_path.write_text(json.dumps(config, indent=2) + "\n")

    converted = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    reference = sentencepiece.SentencePieceProcessor(model_file=str(src / SENTENCEPIECE_FILE))
    for text in PROBE_TEXTS:
        expected = reference.encode(text)
        got = converted(text, add_special_tokens=False)["input_ids"]
        if got != expected:
            raise ModelError(
                f"the tokenizer.model of {src}, converted to a tokenizer.json, tokenizes "
                f"{text!r} as {got} where sentencepiece gives {expected}; add a tokenizer.json "
                f"that matches it to {src}"
            )
    return converted
