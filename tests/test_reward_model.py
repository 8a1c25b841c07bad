"""Tests of genies.methods.tuned.reward_model: reward read position, loss, seeded build, QLoRA,
predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genies.data.materialise import examples_table
from genies.methods.tuned.reward_model import (
    RewardModelError,
    build_reward_model,
    collate,
    encode_examples,
    load_trainable,
    preference_loss,
    reward_predictions,
    trainable_tensors,
)
from genies.methods.tuned.training import resolve_params
from genies.models.prepare import prepare_model
from tests.fixtures import make_examples

TORCH_THREADS = 2  # pinned by tests/conftest.py


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    prepare_model({"source": "tiny", "seed": 0}, path)
    return path


def _params(method="lora", **extra):
    base = {"dtype": "float32", "device": "cpu", "lora_r": 4, "lora_alpha": 8}
    return resolve_params(method, {**base, **extra})


def _nonzero_lora(model):
    """LoRA B starts at zero; give it values so the adapters change the rewards."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _reference_reward(model, ids: list[int]) -> float:
    """Reward computed by hand: unpadded sequence, hidden state of its very last position."""
    x = torch.tensor([ids])
    embeds = model.lm.get_input_embeddings()(x)
    if model.prompt is not None:
        embeds = torch.cat([model.prompt[None].to(embeds.dtype), embeds], dim=1)
    hidden = model.lm.model(inputs_embeds=embeds).last_hidden_state[0, -1]
    return float(model.head(hidden.float()))


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_reward_read_at_last_real_token(tiny_dir, method):
    model, loaded = build_reward_model(tiny_dir, _params(method), seed=0, device="cpu")
    _nonzero_lora(model)
    model.eval()
    pad = loaded.tokenizer.pad_token_id
    # The pad id inside a text must not move the read position (upstream's bug, spec 4.4).
    seqs = [[1, 40, 41, pad, 42, 2], [1, 50, 2], [1, 60, 61, 62, 63, 64, 65, 66, 2]]
    ids, mask = collate(seqs, pad, "cpu")
    with torch.no_grad():
        batched = model(ids, mask)
        expected = [_reference_reward(model, s) for s in seqs]
    np.testing.assert_allclose(batched.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert len(set(np.round(expected, 6))) == 3  # the three texts really differ


def test_one_forward_equals_two(tiny_dir):
    model, loaded = build_reward_model(tiny_dir, _params(lora_dropout=0.0), seed=0, device="cpu")
    _nonzero_lora(model)
    pad = loaded.tokenizer.pad_token_id
    chosen = [[1, 40, 41, 42, 2], [1, 43, 2]]
    rejected = [[1, 50, 2], [1, 51, 52, 53, 54, 55, 2]]
    ids, mask = collate(chosen + rejected, pad, "cpu")
    r = model(ids, mask)
    one = preference_loss(r[:2], r[2:])
    two = preference_loss(
        model(*collate(chosen, pad, "cpu")), model(*collate(rejected, pad, "cpu"))
    )
    assert one.item() == pytest.approx(two.item(), abs=1e-6)


def test_preference_loss():
    assert float(preference_loss(torch.zeros(3), torch.zeros(3))) == pytest.approx(np.log(2))
    assert float(preference_loss(torch.tensor([50.0]), torch.tensor([0.0]))) < 1e-20
    assert float(preference_loss(torch.tensor([0.0]), torch.tensor([50.0]))) == pytest.approx(50)
    r = torch.tensor([0.3, -1.0], requires_grad=True)
    preference_loss(r[:1], r[1:]).backward()
    assert r.grad[0] < 0 < r.grad[1]  # descending raises the chosen reward


def test_build_is_seeded(tiny_dir):
    for method in ("lora", "prompt_tuning"):
        a = trainable_tensors(build_reward_model(tiny_dir, _params(method), seed=3)[0])
        b = trainable_tensors(build_reward_model(tiny_dir, _params(method), seed=3)[0])
        c = trainable_tensors(build_reward_model(tiny_dir, _params(method), seed=4)[0])
        assert a.keys() == b.keys() == c.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(a["head.weight"], c["head.weight"])
    prompt = trainable_tensors(build_reward_model(tiny_dir, _params("prompt_tuning"), seed=3)[0])
    assert prompt["prompt"].shape == (10, 64)
    assert set(prompt) == {"prompt", "head.weight"}


def test_trainable_roundtrip_and_mismatch(tiny_dir):
    model, _ = build_reward_model(tiny_dir, _params(), seed=0)
    _nonzero_lora(model)
    saved = trainable_tensors(model)
    fresh, _ = build_reward_model(tiny_dir, _params(), seed=1)
    load_trainable(fresh, saved)
    assert all(torch.equal(saved[k], v) for k, v in trainable_tensors(fresh).items())
    other, _ = build_reward_model(tiny_dir, _params("prompt_tuning"), seed=0)
    with pytest.raises(ValueError, match="do not fit"):
        load_trainable(other, saved)


def test_qlora_on_cpu_keeps_gradients_after_eval(tiny_dir):
    """bitsandbytes repacks 4-bit weights in eval mode on AVX512-BF16 CPUs and then loses
    all gradients through them; the reward model must still train after a validation."""
    model, loaded = build_reward_model(tiny_dir, _params(quantization="nf4"), seed=0)
    assert loaded.quantization == "nf4"
    assert "Linear4bit" in type(model.lm.model.layers[0].mlp.down_proj).__name__
    _nonzero_lora(model)
    ids, mask = collate([[1, 40, 41, 2], [1, 50, 51, 52, 2]], 0, "cpu")
    model.eval()
    with torch.inference_mode():
        model(ids, mask)
    model.train()
    model(ids, mask).sum().backward()
    lora = {n: p.grad for n, p in model.named_parameters() if "lora_A" in n}
    assert lora and all(g is not None and g.abs().sum() > 0 for g in lora.values())


def test_encode_truncation_keeps_bos_and_end(tiny_dir):
    tok = build_reward_model(tiny_dir, _params(), seed=0)[1].tokenizer
    full, cut = encode_examples(tok, ["a long prompt " * 5], [["the end"]], None)
    short, cut_short = encode_examples(tok, ["a long prompt " * 5], [["the end"]], 8)
    assert cut == 0 and cut_short == 1
    assert short[0][0] == [full[0][0][0]] + full[0][0][-7:]
    assert short[0][0][0] == tok.bos_token_id and short[0][0][-1] == tok.eos_token_id


class _Counting(torch.nn.Module):
    """Wraps a reward model and records how many sequences it scored."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, ids, mask):
        self.rows += ids.shape[0]
        return self.model(ids, mask)


def test_predictions_score_each_response_once(tiny_dir):
    model, loaded = build_reward_model(tiny_dir, _params(), seed=0)
    _nonzero_lora(model)
    examples = examples_table("fx", "test", make_examples(5, 3, seed=9))
    counting = _Counting(model).eval()
    labels = {"model": "tiny", "intervention": "lora", "train": "fx", "eval_dataset": "fx"}
    table = reward_predictions(
        counting,
        loaded.tokenizer,
        examples,
        labels=labels,
        batch_size=4,
        max_length=None,
        device="cpu",
    )
    assert counting.rows == 5 * 3  # each response once, not once per pair
    assert table.num_rows == 5 * 2
    cols = examples.to_pydict()
    seqs, _ = encode_examples(loaded.tokenizer, cols["prompt"], cols["responses"], None)
    with torch.no_grad():
        r = [[_reference_reward(model, s) for s in row] for row in seqs]
    out = table.to_pydict()
    for i in range(table.num_rows):
        row = int(out["example_id"][i].split("/")[-1])
        diff = r[row][out["preferred_response"][i]] - r[row][out["dispreferred_response"][i]]
        assert out["prob_preferred"][i] == pytest.approx(1 / (1 + np.exp(-diff)), abs=1e-5)
        assert out["correct"][i] == (diff > 0)


def test_prediction_oom_message(tiny_dir, monkeypatch):
    model, loaded = build_reward_model(tiny_dir, _params(), seed=0)

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(model, "forward", boom)
    examples = examples_table("fx", "test", make_examples(3, 2, seed=9))
    labels = {"model": "tiny", "intervention": "lora", "train": "fx", "eval_dataset": "fx"}
    with pytest.raises(RewardModelError) as err:
        reward_predictions(
            model,
            loaded.tokenizer,
            examples,
            labels=labels,
            batch_size=16,
            max_length=None,
            device="cpu",
        )
    assert "eval_batch_size" in str(err.value) and "now 16" in str(err.value)
    assert "Tried to allocate 20.00 GiB" in str(err.value)
    assert err.value.__suppress_context__  # no chained traceback
