"""Special-token strings: text that a tokenizer turns into control tokens when it parses them.

The workflow never parses them in data: prompts, responses and few-shot demonstrations are
encoded as plain text (`genies.models.tokens`), so "Hello<|endoftext|>" in a response is the
characters it shows, not SmolLM2's end of text. Only the chat template and the workflow's own
BOS and EOS add control tokens. The published GENIES code parsed them (docs/fidelity.md).

Materialisation (`genies.data.materialise`) still warns about examples that contain such a
string: a model may treat the text unlike the control token it looks like. It runs before any
model is prepared, so it cannot ask the run's tokenizers; it looks for this fixed list of the
special tokens of common model families and the tiny test model's (`genies.models.tiny`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SPECIAL_TOKEN_STRINGS = (
    # GPT-2, GPT-NeoX / Pythia, SmolLM2, Qwen, StarCoder: end of text; ChatML turns
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|padding|>",
    # SmolLM2 (the default model) and StarCoder: code-corpus markers
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
    # LLaMA 1/2, OpenLLaMA, Mistral, the tiny test model: SentencePiece BOS/EOS/UNK/PAD
    "<s>",
    "</s>",
    "<unk>",
    "<pad>",
    # Llama 2 / Mistral chat markup
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    # Llama 3
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    # Gemma
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
    # Phi-3, Zephyr
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    # BERT, DeBERTa, RoBERTa: sequence-classification reward models of your own
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[PAD]",
    "[UNK]",
    "<mask>",
)
_PATTERN = re.compile(
    "|".join(map(re.escape, sorted(SPECIAL_TOKEN_STRINGS, key=len, reverse=True)))
)


def special_tokens_in(texts: Iterable[str]) -> set[str]:
    """The special-token strings that occur in any of `texts`."""
    found: set[str] = set()
    for text in texts:
        found.update(_PATTERN.findall(text))
    return found
