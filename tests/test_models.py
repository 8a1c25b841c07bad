"""Tests of genies.models.prepare / loading / tiny: preparing and loading model directories."""

from __future__ import annotations

import importlib.util
import json
import math
import time

import pytest
import torch
import transformers
from safetensors.torch import load_file

from genies.models import loading as models
from genies.models import prepare
from genies.models.loading import (
    LINK_FILE,
    MODEL_INFO_FILE,
    LoadedModel,
    ModelError,
    load_model,
    model_layout,
    resolve_device,
    resolve_dtype,
)
from genies.models.prepare import prepare_model
from genies.models.tiny import train_tiny_tokenizer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TEXTS = [
    "The capital of France is Paris.",
    "Human: héllo wörld — ça va? ✓ 日本語 emoji 🙂\n\nAssistant:  two  spaces\tand a tab ",
    "def f(x):\n    return {'a': [1, 2.5, -3]}\n",
    "",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny"
    prepare_model({"source": "tiny"}, out)
    return out


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_tiny_prepare_and_load(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MODEL_INFO_FILE} <= names
    assert not [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    assert _leftovers(tiny_dir.parent) == []

    info = json.loads((tiny_dir / MODEL_INFO_FILE).read_text())
    assert info["spec"] == {"source": "tiny"}
    desc = info["description"]
    assert desc["source"] == "tiny"
    assert (desc["num_layers"], desc["num_heads"], desc["head_dim"], desc["hidden_size"]) == (
        2,
        4,
        16,
        64,
    )

    lm = load_model(tiny_dir, device="cpu", dtype="float32")
    assert isinstance(lm, LoadedModel)
    assert lm.device == torch.device("cpu") and lm.dtype == torch.float32
    assert not lm.model.training
    assert next(lm.model.parameters()).dtype == torch.float32
    assert desc["parameters"] == sum(p.numel() for p in lm.model.parameters())
    assert (
        lm.layout
        == model_layout(lm.model)
        == {
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 4,
            "head_dim": 16,
            "hidden_size": 64,
        }
    )
    batch = lm.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = lm.model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], 512)
    assert torch.isfinite(logits).all()


def test_load_auto_device_and_dtype(tiny_dir):
    lm = load_model(tiny_dir)
    assert lm.device == resolve_device("auto")
    assert lm.dtype == resolve_dtype("auto", lm.device)
    assert next(lm.model.parameters()).dtype == lm.dtype


def test_tiny_is_deterministic(tmp_path, tiny_dir):
    prepare_model({"source": "tiny"}, tmp_path / "again")
    for name in sorted(p.name for p in tiny_dir.iterdir()):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_dir / name).read_bytes(), name

    rng_before = torch.random.get_rng_state()
    prepare_model({"source": "tiny", "seed": 1}, tmp_path / "seed1")
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched
    a = load_file(tiny_dir / "model.safetensors")
    b = load_file(tmp_path / "seed1" / "model.safetensors")
    assert a.keys() == b.keys()
    assert not torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])
    assert (tmp_path / "seed1" / "tokenizer.json").read_bytes() == (
        tiny_dir / "tokenizer.json"
    ).read_bytes()


def test_tiny_tokenizer(tiny_dir):
    tok = load_model(tiny_dir, device="cpu", dtype="float32").tokenizer
    assert tok.is_fast
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == (
        "<pad>",
        "<s>",
        "</s>",
        None,
    )
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == 512
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
        assert all(0 <= i < 512 for i in ids)
    assert tok("hello")["input_ids"][0] != tok.bos_token_id  # no BOS added by default
    assert len(tok("The capital of France")["input_ids"]) < len("The capital of France")
    # The in-memory tokenizer is the saved one.
    assert train_tiny_tokenizer(512)("héllo ✓")["input_ids"] == tok("héllo ✓")["input_ids"]


def test_tiny_layout_gqa_and_bad_params(tmp_path):
    out = tmp_path / "gqa"
    spec = {"source": "tiny", "hidden_size": 48, "num_heads": 6, "num_kv_heads": 2}
    prepare_model(spec, out)
    layout = model_layout(load_model(out, device="cpu", dtype="float32").model)
    assert layout == {
        "num_layers": 2,
        "num_heads": 6,
        "num_kv_heads": 2,
        "head_dim": 8,
        "hidden_size": 48,
    }
    with pytest.raises(ModelError, match="divisible"):
        prepare_model({"source": "tiny", "hidden_size": 50, "num_heads": 4}, tmp_path / "bad")
    with pytest.raises(ModelError, match="vocab_size"):
        prepare_model({"source": "tiny", "vocab_size": 100}, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert _leftovers(tmp_path) == []


def test_atomic_write_on_failure(tmp_path, monkeypatch):
    def failing_save(self, save_directory, *args, **kwargs):
        (save_directory / "model.safetensors").write_bytes(b"half written")
        raise RuntimeError("disk full")

    out = tmp_path / "tiny"
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_model({"source": "tiny"}, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []

    # A failure while replacing an existing directory leaves the old one intact.
    monkeypatch.undo()
    prepare_model({"source": "tiny"}, out)
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_model({"source": "tiny", "seed": 3}, out)
    assert (out / "model.safetensors").read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_prepare_replaces_existing_dir(tmp_path, tiny_dir):
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "pytorch_model.bin").write_bytes(b"stale")
    prepare_model({"source": "tiny"}, out)
    assert not (out / "pytorch_model.bin").exists()
    assert (out / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    assert _leftovers(tmp_path) == []


def test_local_source_copies(tmp_path, tiny_dir):
    out = tmp_path / "copy"
    prepare_model({"source": "local", "path": str(tiny_dir)}, out)
    assert not (out / LINK_FILE).exists()
    assert not [p for p in out.iterdir() if p.name.endswith(PICKLE_SUFFIXES)]
    a = load_file(tiny_dir / "model.safetensors")
    b = load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    info = json.loads((out / MODEL_INFO_FILE).read_text())
    assert info["description"]["source"] == "local"
    assert info["description"]["path"] == str(tiny_dir.resolve())
    tok = load_model(out, device="cpu", dtype="float32").tokenizer
    assert tok.decode(tok(TEXTS[1])["input_ids"]) == TEXTS[1]


def test_local_source_link(tmp_path, tiny_dir):
    out = tmp_path / "link"
    prepare_model({"source": "local", "path": str(tiny_dir), "link": True}, out)
    assert sorted(p.name for p in out.iterdir()) == sorted([LINK_FILE, MODEL_INFO_FILE])
    assert json.loads((out / LINK_FILE).read_text())["path"] == str(tiny_dir.resolve())
    desc = json.loads((out / MODEL_INFO_FILE).read_text())["description"]
    assert desc["link"] is True and desc["num_layers"] == 2

    linked = load_model(out, device="cpu", dtype="float32")
    direct = load_model(tiny_dir, device="cpu", dtype="float32")
    assert desc["parameters"] == sum(p.numel() for p in direct.model.parameters())
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(linked.model(ids).logits, direct.model(ids).logits)


def test_local_source_refuses_pickle(tmp_path, tiny_dir):
    src = tmp_path / "pickled"
    src.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes((tiny_dir / name).read_bytes())
    (src / "pytorch_model.bin").write_bytes(b"not loaded: pickles are refused before reading")
    for link in (False, True):
        with pytest.raises(ModelError, match="pytorch_model.bin") as err:
            prepare_model({"source": "local", "path": str(src), "link": link}, tmp_path / "out")
        assert "safetensors" in str(err.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ModelError, match="safetensors"):
        load_model(src, device="cpu", dtype="float32")


def test_local_source_bad_paths(tmp_path):
    with pytest.raises(ModelError, match="path"):
        prepare_model({"source": "local"}, tmp_path / "out")
    with pytest.raises(ModelError, match="not a directory"):
        prepare_model({"source": "local", "path": str(tmp_path / "nope")}, tmp_path / "out")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope")
    assert _leftovers(tmp_path) == []


def test_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="allowed sources: smollm2, local, hf, tiny"):
        prepare_model({"source": "hub", "name": "gpt2"}, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown model source None"):
        prepare_model({}, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device(name)


def test_resolve_dtype(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype(torch.float32, cpu) == torch.float32
    assert resolve_dtype("float16", cuda) == torch.float16
    with pytest.raises(ModelError, match="float16 on CPU"):
        resolve_dtype("float16", cpu)
    with pytest.raises(ModelError, match="unknown dtype"):
        resolve_dtype("int8", cpu)

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", cuda) == torch.float16


def test_cpu_bf16_detection_is_a_bool():
    assert isinstance(models.cpu_has_native_bf16(), bool)


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed"
)
def test_nf4_quantized_load(tiny_dir):
    import bitsandbytes as bnb

    dev = resolve_device("auto")
    q = load_model(tiny_dir, device=str(dev), dtype="float32", quantization="nf4")
    assert q.quantization == "nf4"
    assert isinstance(q.model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    f = load_model(tiny_dir, device=str(dev), dtype="float32")
    ids = torch.tensor([[5, 6, 7, 8, 9]], device=dev)
    with torch.no_grad():
        lq, lf = q.model(ids).logits, f.model(ids).logits
    assert lq.shape == lf.shape and torch.isfinite(lq).all()
    assert (lq - lf).abs().max() < 0.5 * lf.abs().max() + 0.1  # close, not equal
    with pytest.raises(ModelError, match="unknown quantization"):
        load_model(tiny_dir, device="cpu", dtype="float32", quantization="int3")


@pytest.mark.slow
def test_smollm2_prepare_and_load(tmp_path):
    try:
        prepare.smollm2_folder()
    except ModelError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "smollm2"
    start = time.perf_counter()
    prepare_model({"source": "smollm2"}, out)
    prepare_s = time.perf_counter() - start
    assert not [p for p in out.iterdir() if p.name.endswith(PICKLE_SUFFIXES)]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert _leftovers(tmp_path) == []

    start = time.perf_counter()
    lm = load_model(out, device="cpu", dtype="float32")
    load_s = time.perf_counter() - start
    print(f"smollm2: prepare {prepare_s:.1f} s, reload {load_s:.2f} s")
    assert lm.layout == {
        "num_layers": 30,
        "num_heads": 9,
        "num_kv_heads": 3,
        "head_dim": 64,
        "hidden_size": 576,
    }
    assert next(lm.model.parameters()).dtype == torch.float32
    tok = lm.tokenizer
    assert tok.is_fast and tok.pad_token_id is not None
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tok.model_max_length == 8192
    for text in TEXTS:
        assert tok.decode(tok(text)["input_ids"]) == text

    def logprob(prompt, continuation):
        p = tok(prompt)["input_ids"]
        c = tok(continuation)["input_ids"]
        with torch.no_grad():
            logits = lm.model(torch.tensor([p + c])).logits[0].float()
        logp = logits.log_softmax(-1)[len(p) - 1 : -1]
        return logp.gather(-1, torch.tensor(c)[:, None]).sum().item()

    paris = logprob("The capital of France is", " Paris")
    banana = logprob("The capital of France is", " banana")
    assert math.isfinite(paris) and paris > banana + 5
