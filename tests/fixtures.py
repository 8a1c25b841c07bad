"""Small GENIES-format data folders built by the tests (never the real data)."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

WORDS = (
    "apple river stone cloud garden music paper window forest candle silver ocean "
    "bridge letter mountain coffee yellow planet engine summer winter basket"
).split()


def make_examples(n: int, k: int, seed: int, marker: str = "good") -> list[dict]:
    """n examples with k responses; the preferred one contains `marker` (a learnable cue)."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        topic = " ".join(rng.sample(WORDS, 3))
        prompt = f"### Instruction:\nWrite about {topic} ({i}).\n\n### Response:\n"
        best = rng.randrange(k)
        responses = {}
        for j in range(k):
            body = " ".join(rng.sample(WORDS, rng.randint(2, 6)))
            text = f"{marker} {body}" if j == best else f"{body} {j}"
            responses[text] = 1.0 if j == best else 0.0
        examples.append({"prompt": prompt, "responses": responses, "instruction": topic})
    return examples


DATASETS = {
    # name: (responses per example, seed)
    "src_a": (2, 1),
    "tgt_b": (3, 2),
    "tgt_c": (2, 3),
    "ref_d": (4, 4),
}

GENIES_SHIFTS = [
    {"source": "src_a", "target": "tgt_b", "label": "extreme", "category": "skill"},
    {
        "source": "src_a",
        "target": "tgt_c",
        "target_reference": "ref_d",
        "label": "probing",
        "category": "unwanted_personas",
    },
]


def write_dataset(root: Path, name: str, k: int, seed: int, n_train=12, n_test=6) -> None:
    d = root / "distributions" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.json").write_text(json.dumps(make_examples(n_train, k, seed)))
    (d / "test.json").write_text(json.dumps(make_examples(n_test, k, seed + 1000)))
    (d / "metadata.json").write_text(json.dumps({"id": name}))


def make_genies_folder(root: Path, n_train=12, n_test=6) -> Path:
    """A folder laid out like the upstream archive, leftovers included."""
    root = Path(root)
    for name, (k, seed) in DATASETS.items():
        write_dataset(root, name, k, seed, n_train, n_test)
    # Upstream leftovers that must be ignored.
    (root / "distributions" / "src_a" / "train-copy.json").write_text("not json")
    (root / "distributions" / "src_a" / "extra.json").write_text("[]")
    (root / "distributions" / "src_a" / "hps").mkdir()
    shifts = root / "distribution_shifts"
    (shifts / "extreme").mkdir(parents=True)
    (shifts / "probing").mkdir()
    (shifts / "GENIES.json").write_text(json.dumps(GENIES_SHIFTS))
    plain = [{k: v for k, v in s.items() if k not in ("label", "category")} for s in GENIES_SHIFTS]
    (shifts / "extreme" / "skill.json").write_text(json.dumps(plain[:1]))
    (shifts / "extreme" / "all.json").write_text(json.dumps(plain[:1]))
    (shifts / "probing" / "unwanted_personas.json").write_text(json.dumps(plain[1:]))
    (shifts / "probing" / "all.json").write_text(json.dumps(plain[1:]))
    # all.json repeats a shift, as upstream's does.
    (shifts / "all.json").write_text(json.dumps(plain + plain[1:]))
    return root


# Every intervention that reads or prompts the frozen model, sized for the tiny fixtures.
FROZEN_MODEL_INTERVENTIONS = {
    "zero_shot": {},
    "random": {},
    "few_shot": {"n_shots": 2},
    "mms": {"n_units": 2},
    "lat1": {"n_units": 1},
    "lat2": {"n_units": 1},
    "cra": {"n_units": 2},
    "ccs": {"restarts": 2, "epochs": 50},
}

# The trained reward models, a few steps on the tiny fixtures.
TRAINED_INTERVENTIONS = {
    "lora": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "lora_r": 4, "lora_alpha": 8},
    "prompt_tuning": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "num_virtual_tokens": 4},
}
ALL_INTERVENTIONS = {**FROZEN_MODEL_INTERVENTIONS, **TRAINED_INTERVENTIONS}

TINY_MODEL = {"source": "tiny", "seed": 0, "hidden_size": 64, "num_layers": 2, "num_heads": 4}


def workflow_config(data_dir, **overrides) -> dict:
    config = {
        "data_dir": str(data_dir),
        "shifts": "genies",
        "models": {"tiny": dict(TINY_MODEL)},
        "run_models": ["tiny"],
        "interventions": {"zero_shot": {}},
        "capability_interventions": ["zero_shot"],
        "seed": 0,
        "caps": {"train_examples": None, "test_examples": None},
        "scoring": {
            "normalisation": "sum",
            "batch_tokens": 512,
            "device": "cpu",
            "dtype": "float32",
        },
        "threads": 1,
    }
    config.update(overrides)
    return config


def tiny_llama(attn: str = "sdpa", vocab: int = 300):
    """A seeded random 2-layer Llama (4 heads, 2 KV heads) for scoring and capture tests."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).eval()


LLAMA_SHAPES = {  # layers, hidden, intermediate, vocab, KV heads of the released checkpoints
    "7b": (32, 4096, 11008, 32000, 32),
    "13b": (40, 5120, 13824, 32000, 40),
    "30b": (60, 6656, 17920, 32000, 52),
    "65b": (80, 8192, 22016, 32000, 64),
    "70b": (80, 8192, 28672, 32000, 8),  # Llama-2-70B
    "8b-128k": (32, 4096, 14336, 128256, 8),  # Llama-3-8B
}


def fake_llama_dir(root: Path, size: str, shards: int = 2) -> Path:
    """A local model directory whose safetensors files have a LLaMA checkpoint's headers and
    sizes but no data (sparse files: nothing is written to disk), for resource planning."""
    layers, hidden, inter, vocab, kv_heads = LLAMA_SHAPES[size]
    kv = 128 * kv_heads  # head size 128
    tensors = {"model.embed_tokens.weight": [vocab, hidden], "lm_head.weight": [vocab, hidden]}
    tensors["model.norm.weight"] = [hidden]
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, rows in (("q_proj", hidden), ("k_proj", kv), ("v_proj", kv), ("o_proj", hidden)):
            tensors[f"{p}self_attn.{name}.weight"] = [rows, hidden]
        for name, shape in (("gate_proj", [inter, hidden]), ("up_proj", [inter, hidden])):
            tensors[f"{p}mlp.{name}.weight"] = shape
        tensors[f"{p}mlp.down_proj.weight"] = [hidden, inter]
        tensors[f"{p}input_layernorm.weight"] = [hidden]
        tensors[f"{p}post_attention_layernorm.weight"] = [hidden]
    root.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    per_shard = -(-len(names) // shards)
    for s in range(shards):
        header, offset = {}, 0
        for name in names[s * per_shard : (s + 1) * per_shard]:
            size_bytes = 2 * int(np.prod(tensors[name]))
            header[name] = {"dtype": "F16", "shape": tensors[name],
                            "data_offsets": [offset, offset + size_bytes]}  # fmt: skip
            offset += size_bytes
        raw = json.dumps(header).encode()
        path = root / f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + offset)
    config = {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": layers,
              "num_attention_heads": hidden // 128, "num_key_value_heads": kv_heads,
              "intermediate_size": inter, "vocab_size": vocab}  # fmt: skip
    (root / "config.json").write_text(json.dumps(config))
    return root


def tiny_reward_model_dir(root: Path, seed: int = 3, chat_template: bool = False) -> Path:
    """A local Hugging Face directory holding a tiny random LlamaForSequenceClassification
    with one label (safetensors) and the tiny tokenizer, which adds BOS like Llama's; with
    `chat_template`, the tokenizer has `genies.models.tiny.TINY_CHAT_TEMPLATE`."""
    from tokenizers import processors
    from transformers import LlamaForSequenceClassification

    from genies.models.tiny import (
        TINY_CHAT_TEMPLATE,
        tiny_config,
        tiny_params,
        train_tiny_tokenizer,
    )

    tokenizer = train_tiny_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    if chat_template:
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
    config = tiny_config(tiny_params({"seed": seed}), tokenizer)
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config)
    root = Path(root)
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Rows of the user's own preference data, in the format of `path`'s suffix: .json (an
    array), .jsonl, .parquet or .csv (columns of scalars only)."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".parquet":
        pyarrow.parquet.write_table(pa.Table.from_pylist(rows), path)
    else:
        pyarrow.csv.write_csv(pa.Table.from_pylist(rows), path)
    return path


def preference_pairs(n: int, seed: int, marker: str = "good") -> list[dict]:
    """`make_examples` as prompt/chosen/rejected rows (the `pairs` layout), with a bare
    question as the prompt and a scalar column to keep as metadata."""
    rows = []
    for i, ex in enumerate(make_examples(n, 2, seed, marker)):
        (chosen,) = [t for t, s in ex["responses"].items() if s == 1.0]
        (rejected,) = [t for t, s in ex["responses"].items() if s == 0.0]
        question = f"Write about {ex['instruction']} ({i})."
        rows.append({"question": question, "chosen": chosen, "rejected": rejected, "id": i})
    return rows


def llama1_dir(root: Path) -> Path:
    """A LLaMA-1-style model folder built offline: a tiny random Llama (safetensors) whose
    tokenizer is only a sentencepiece tokenizer.model (BPE, byte fallback, dummy prefix, as
    Meta's) with a LlamaTokenizer tokenizer_config.json; no tokenizer.json."""
    import sentencepiece as spm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    words = ("apple river stone cloud garden music paper window forest candle silver ocean "
             "Response Instruction Human Assistant the a of and to in is that it was for on "
             "are with as I his they be at one have this").split()  # fmt: skip
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(12)) + f" {rng.randint(0, 999)}."
             for _ in range(3000)]  # fmt: skip
    lines += ["### Instruction:\nWrite about apples.\n\n### Response:\nSure: café naïve 東京"] * 5
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "tokenizer"), vocab_size=400,
        model_type="bpe", byte_fallback=True, split_digits=True, add_dummy_prefix=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=0.9995,
        allow_whitespace_only_pieces=True, minloglevel=2,
    )  # fmt: skip
    corpus.unlink()
    (root / "tokenizer.vocab").unlink()
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (root / "special_tokens_map.json").write_text(json.dumps(special))
    (root / "tokenizer_config.json").write_text(json.dumps({
        **special, "model_max_length": 2048, "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
    }))  # fmt: skip
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=400, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(root)
    return root
