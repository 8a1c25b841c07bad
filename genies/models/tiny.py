"""A tiny, randomly initialised Llama model and an offline tokenizer, for tests.

Everything here is built without a network and is deterministic: the tokenizer is a byte-level
BPE trained on a small fixed corpus (same merges, same files every time), and the weights come
from `torch.manual_seed(seed)` inside a forked RNG (the caller's global RNG state is untouched).
Byte-level BPE covers every input string, so the tokenizer has no unknown token.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from genies.models.sources import TINY_DEFAULTS, TINY_MIN_VOCAB_SIZE, tiny_params

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)  # ids 0, 1, 2
MIN_VOCAB_SIZE = TINY_MIN_VOCAB_SIZE
# The chat template of a `tiny` model whose spec says `chat_template: true` (tests of
# genies.data.chat): Zephyr's layout, which writes BOS itself and ends an answer with EOS and "\n".
# (Newlines are string literals: transformers renders templates with trim_blocks.)
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


# A small fixed corpus (English prose, dialogue in the GENIES prompt style, code). Changing it
# changes the tokenizer and therefore every tiny-model result: treat it as frozen.
TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a "
    "single step. The capital of France is Paris, and the capital of Italy is Rome. Water boils "
    "at one hundred degrees Celsius at sea level. The sun rises in the east and sets in the west.",
    "Human: What is the best way to learn a new language?\n\nAssistant: Practice every day, read "
    "books, listen to native speakers and do not be afraid of making mistakes.",
    "Human: Can you help me write a short poem about the sea?\n\nAssistant: The sea is wide, the "
    "sea is deep, it sings the sailors all to sleep.",
    "Human: Which answer is correct? Answer yes or no.\n\nAssistant: Yes, the first answer is "
    "correct because it explains the reason clearly and honestly.",
    "Question: Is the following statement true or false? The moon is made of cheese.\n"
    "Answer: False. The moon is made of rock and dust.",
    "Reward models are trained to prefer helpful, honest and harmless responses. A probe reads "
    "the hidden state of a language model and predicts which of two responses is better.",
    "The model was evaluated on many distribution shifts: from easy to hard problems, from one "
    "language to another, from short answers to long explanations, and from code to prose.",
    "def add(a, b):\n    return a + b\n\n\n"
    "def mean(values):\n    return sum(values) / len(values)\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n    else:\n        continue\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    "    def norm(self):\n        return (self.x ** 2 + self.y ** 2) ** 0.5\n",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\nprint(x.shape, x.sum())\n",
    'SELECT name, count(*) FROM users WHERE age > 18 GROUP BY name ORDER BY 2 DESC;\n{"key": '
    '"value", "list": [1, 2, 3], "nested": {"ok": true}}',
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 3.14 2.71 -1 +1 = < > ( ) [ ] { } ! ? ; :",
)


def train_tiny_tokenizer(
    vocab_size: int = 512, corpus: tuple[str, ...] | list[str] = TINY_CORPUS
) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer trained on `corpus` (default `TINY_CORPUS`).

    Special tokens: pad `<pad>` (0), bos `<s>` (1), eos `</s>` (2); no unk token. It does not add
    BOS/EOS when encoding (like SmolLM2): callers add special tokens themselves. The trained vocab
    can be smaller than `vocab_size` if the corpus runs out of merges; it is never larger.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"tiny tokenizer vocab_size must be >= {MIN_VOCAB_SIZE}, got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Repeat the corpus so frequent pairs dominate clearly; order is fixed, so training is too.
    tok.train_from_iterator(list(corpus) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=TINY_DEFAULTS["max_position_embeddings"],
    )


def build_tiny(spec: dict | None = None) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Build the tiny model (float32, eval mode) and its tokenizer from a `source: tiny` spec.

    With `chat_template: true` the tokenizer gets `TINY_CHAT_TEMPLATE`."""
    params = tiny_params(spec or {})
    tokenizer = train_tiny_tokenizer(params["vocab_size"])
    tokenizer.model_max_length = params["max_position_embeddings"]
    if (spec or {}).get("chat_template"):
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
    config = tiny_config(params, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params["seed"])
        model = LlamaForCausalLM(config)
    model.to(torch.float32)
    model.eval()
    return model, tokenizer


def tiny_config(params: dict, tokenizer) -> LlamaConfig:
    """The Llama config of validated `tiny_params` (bench/gpu_check.py scales it to 7B)."""
    return LlamaConfig(
        vocab_size=params["vocab_size"],
        hidden_size=params["hidden_size"],
        intermediate_size=params["intermediate_size"],
        num_hidden_layers=params["num_layers"],
        num_attention_heads=params["num_heads"],
        num_key_value_heads=params["num_kv_heads"],
        max_position_embeddings=params["max_position_embeddings"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
