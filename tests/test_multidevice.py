"""Models spread over several devices (issue 10): accelerate device maps (GPU counts:
tests/test_gpus.py).

No GPU here: the model is spread over the CPU and disk offload instead, which runs through the
same accelerate hooks (`AlignDevicesHook` per block, inputs moved to each block's device,
outputs brought back) as a model spread over several GPUs. Scores, captured activations and a
training step must equal the single-device run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genies.forward.activations import ActivationCapture
from genies.forward.scoring import score_tokenized
from genies.methods.tuned.reward_model import build_reward_model, collate, preference_loss
from genies.methods.tuned.training import resolve_params
from genies.models.layout import activation_shapes
from genies.models.loading import ModelError, load_model
from genies.models.prepare import prepare_model
from genies.models.tokens import tokenize_examples

# Layer 1 and the LM head are offloaded to disk: their weights are loaded for each call.
DISK_MAP = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.norm": "cpu",
    "lm_head": "disk",
}
# Training cannot run through disk offload (accelerate puts the weights back on the meta device
# after each call, before the backward pass): every block keeps its weights and gets a hook, as
# on several GPUs; only the LM head, unused by a reward model, is offloaded.
HOOKED_MAP = {**DISK_MAP, "model.layers.1": "cpu"}

PROMPTS = [
    "Human: What is the best way to learn a new language?\n\nAssistant:",
    "The capital of France is",
    "def add(a, b):\n",
    "Question: Is the moon made of cheese?\nAnswer:",
    "x",
]
RESPONSES = [
    [" Practice every day.", " Read books and listen.", " Give up."],
    [" Paris.", " Rome, and the capital of Italy is Paris.", " Paris"],
    ["    return a + b\n", "    return a - b\n", "    pass\n"],
    [" No, it is rock and dust.", " Yes.", " False"],
    [" y", " z z z z z z z z", " the quick brown fox"],
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny3"
    prepare_model({"source": "tiny", "num_layers": 3, "num_kv_heads": 2}, out)
    return out


def _spread(tiny_dir, tmp_path, device_map=DISK_MAP):
    return load_model(
        tiny_dir, dtype="float32", device_map=device_map, offload_folder=tmp_path / "offload"
    )


def _hooked_blocks(model) -> set[str]:
    return {name for name, m in model.named_modules() if getattr(m, "_hf_hook", None)}


def test_spread_model_is_dispatched_with_hooks(tiny_dir, tmp_path):
    single = load_model(tiny_dir, device="cpu", dtype="float32")
    spread = _spread(tiny_dir, tmp_path)
    assert spread.device_map == DISK_MAP and spread.device == torch.device("cpu")
    assert {"model.layers.0", "model.layers.1", "model.layers.2", "lm_head"} <= _hooked_blocks(
        spread.model
    )
    assert spread.model.model.layers[1].mlp.up_proj.weight.device.type == "meta"  # on disk
    assert not _hooked_blocks(single.model)
    assert spread.tokenizer.model_max_length == single.tokenizer.model_max_length == 2048


@pytest.mark.parametrize("batch_tokens", [16, 4096])
def test_scores_and_activations_equal_single_device(tiny_dir, tmp_path, batch_tokens):
    runs = []
    for loaded in (
        load_model(tiny_dir, device="cpu", dtype="float32"),
        _spread(tiny_dir, tmp_path),
    ):
        prompt_ids, response_ids = tokenize_examples(loaded.tokenizer, PROMPTS, RESPONSES)
        n_rows = sum(map(len, response_ids))
        shapes = activation_shapes(n_rows, loaded.layout, heads=True, resid_layers="all")
        arrays = {name: np.zeros(shape, dtype) for name, (shape, dtype) in shapes.items()}
        capture = ActivationCapture(loaded.model, loaded.layout["num_heads"])
        capture.target(arrays["heads"], arrays["resid"])
        result = score_tokenized(
            loaded.model,
            prompt_ids,
            response_ids,
            batch_tokens=batch_tokens,
            device=loaded.device,
            capture=capture,
        )
        capture.remove()
        runs.append((result, arrays))
    (single, single_act), (spread, spread_act) = runs
    assert np.all(np.isfinite(single.logprob_sum))
    np.testing.assert_allclose(spread.logprob_sum, single.logprob_sum, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(spread.n_tokens, single.n_tokens)
    assert single.n_forward > 1
    for name in ("heads", "resid"):
        assert np.abs(single_act[name]).max() > 0, name  # every row was written
        np.testing.assert_allclose(spread_act[name], single_act[name], rtol=0, atol=2e-3)


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_training_step_equals_single_device(tiny_dir, tmp_path, method):
    params = resolve_params(
        method,
        {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "num_virtual_tokens": 3},
    )
    params["dtype"] = "float32"
    runs = []
    for placement in ({}, {"device_map": HOOKED_MAP, "offload_folder": tmp_path / "offload"}):
        model, loaded = build_reward_model(tiny_dir, params, seed=3, device="cpu", **placement)
        if placement:
            assert "model.layers.1" in _hooked_blocks(loaded.model)
        prompt_ids, response_ids = tokenize_examples(loaded.tokenizer, PROMPTS, RESPONSES)
        chosen = [p + rs[0] for p, rs in zip(prompt_ids, response_ids, strict=True)]
        rejected = [p + rs[1] for p, rs in zip(prompt_ids, response_ids, strict=True)]
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)
        model.train()
        ids, mask = collate(chosen + rejected, loaded.tokenizer.pad_token_id, loaded.device)
        rewards = model(ids, mask)
        loss = preference_loss(rewards[: len(chosen)], rewards[len(chosen) :])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        optimizer.step()
        after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        runs.append((loss.item(), grads, after))
    (loss_a, grads_a, after_a), (loss_b, grads_b, after_b) = runs
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert set(grads_a) == set(grads_b) and len(grads_a) > 1
    assert any(g.abs().max() > 0 for n, g in grads_a.items() if "head" not in n)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(after_b[name], after_a[name], rtol=1e-4, atol=1e-6)


def test_several_gpus_need_cuda(tiny_dir):
    with pytest.raises(ModelError, match="needs CUDA"):
        load_model(tiny_dir, device="cpu", gpus=2)
