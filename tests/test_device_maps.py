"""Models spread over two GPUs, without a GPU: every tensor must meet tensors of its own device.

The fake-device harness (tests/fakedev.py) gives tensors a pretend device (`fakegpu:0`,
`fakegpu:1`) while every op runs for real on the CPU, and raises PyTorch's device-mismatch errors
where a run over several GPUs would. Models are spread with accelerate's own `dispatch_model`
(what `from_pretrained(device_map=...)` runs): the embeddings and the first half of the layers on
fakegpu:0, the other half, the final norm and the head on fakegpu:1, as accelerate's "balanced"
map puts them. Training runs on fakegpu:0 and the CPU (the harness's autograd only knows index 0
of its backend), with the same hooks (`fakedev.attach_hooks`). Every result must equal the
single-device one; the control tests plant a device bug in each path and show that the harness
catches it. (tests/test_multidevice.py spreads the model over the CPU and disk offload instead,
where every tensor meets on the CPU: it checks the hooks, not the devices.)
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from genies.forward import scoring
from genies.forward.activations import ActivationCapture
from genies.forward.scoring import score_tokenized
from genies.methods.reward_classifier import ClassifierReward
from genies.methods.tuned import reward_model
from genies.methods.tuned.reward_model import build_reward_model, example_rewards
from genies.methods.tuned.training import resolve_params, train_step
from genies.models.prepare import prepare_model

from .fixtures import tiny_llama

TORCH_THREADS = 1
SEQS = [[[1, *range(5, 5 + n)] for n in (3, 9, 1)], [[1, 7, 8], [1, 9]]]
PAIRS = [([1, 5, 6, 7, 8], [1, 5, 9]), ([1, 10, 11], [1, 12, 13, 14, 15, 16]), ([1, 20], [1, 21])]
PARAMS = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "num_virtual_tokens": 3}


def examples(seed=0, n=6, k=3):
    """Token ids: prompts of various lengths, k responses, some sharing their first tokens."""
    rng = np.random.default_rng(seed)
    prompts, responses = [], []
    for i in range(n):
        prompts.append([1, *rng.integers(3, 300, rng.integers(1, 12)).tolist()])
        shared = rng.integers(3, 300, i % 3).tolist()  # a shared prefix on some examples
        responses.append(
            [[*shared, *rng.integers(3, 300, rng.integers(1, 9)).tolist(), 2] for _ in range(k)]
        )
    return prompts, responses


def spread(model, fakedev) -> torch.device:
    """`model` over fakegpu:0 and fakegpu:1 by accelerate's dispatch_model; the input device."""
    from accelerate import dispatch_model

    first, last = fakedev.FakeDevices.devices(2)
    with torch.no_grad():
        dispatch_model(model, fakedev.split_map(model, first, last), main_device=str(first))
    return first


def tiny_classifier():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(1)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, pad_token_id=0, num_labels=1,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    return LlamaForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny3"
    prepare_model({"source": "tiny", "num_layers": 3, "num_kv_heads": 2}, out)
    return out


def own_reward_model(tiny_dir, method):
    params = resolve_params(method, PARAMS)
    params["dtype"] = "float32"
    return build_reward_model(tiny_dir, params, seed=3, device="cpu")[0]


def place(model, fakedev, devices, hooks=False) -> torch.device:
    """What `build_reward_model(gpus=2)` makes: the LM spread (accelerate's dispatch_model, or
    with `hooks` its hooks alone, for a map with the CPU), the head and the virtual tokens on
    the input device."""
    device_map = fakedev.split_map(model.lm, devices[0], devices[-1])
    with torch.no_grad():
        if hooks:
            fakedev.attach_hooks(model.lm, device_map)
        else:
            from accelerate import dispatch_model

            dispatch_model(model.lm, device_map, main_device=str(devices[0]))
        model.head.to(devices[0])
        if model.prompt is not None:
            model.prompt = torch.nn.Parameter(model.prompt.detach().to(devices[0]))
    return devices[0]


def _require_autograd(fakedev):
    assert fakedev.autograd_ok(), (
        "a backward pass ran before tests/fakedev.py registered its devices: "
        "tests/conftest.py registers them after collection, for tests using `fake_devices`"
    )


# --------------------------------------------------------------------------- the harness


def test_harness_raises_on_mixed_devices_and_computes_for_real(fake_devices):
    model = tiny_llama().requires_grad_(False)
    ids = torch.randint(3, 300, (2, 7))
    ref = model(input_ids=ids).logits
    with fake_devices.FakeDevices(), torch.inference_mode():
        a, b = (torch.ones(3, device=d) for d in fake_devices.FakeDevices.devices(2))
        with pytest.raises(fake_devices.DeviceMismatch, match="fakegpu:0 and fakegpu:1"):
            a + b
        first = spread(model, fake_devices)
        assert model.lm_head.weight.device == torch.device("fakegpu", 1)
        with fake_devices.record_inputs(model.model) as seen:
            out = model(input_ids=ids.to(first))
        # each block's hook moved its inputs to its device; the top hook brought the logits back
        assert out.logits.device == first
        assert seen["norm"] == ["fakegpu:1"] and seen["embed_tokens"] == ["fakegpu:0"]
        assert torch.equal(out.logits.cpu(), ref)
        # the bug of issue 19: a boolean logits_to_keep built on the input device
        keep = torch.ones(2, 7, dtype=torch.bool, device=first)
        with pytest.raises(fake_devices.DeviceMismatch, match="indices should be either on cpu"):
            model(input_ids=ids.to(first), logits_to_keep=keep)


def test_accelerate_moves_keyword_tensors_to_the_first_device(fake_devices):
    """A tensor argument lands on the main (first) device wherever it was made: moving a mask to
    the last device before the call cannot help; it must be applied inside the model."""
    model = tiny_llama().requires_grad_(False)
    ids = torch.randint(3, 300, (2, 7))
    got = {}

    def note(module, args, kwargs):
        got.update({k: str(v.device) for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    with fake_devices.FakeDevices(), torch.inference_mode():
        first = spread(model, fake_devices)
        model.model.register_forward_pre_hook(note, with_kwargs=True)
        last = fake_devices.FakeDevices.devices(2)[1]
        mask = torch.ones(2, 7, dtype=torch.long, device=last)
        model(input_ids=ids.to(first), attention_mask=mask)
    assert got == {"input_ids": "fakegpu:0", "attention_mask": "fakegpu:0"}


# --------------------------------------------------------------------------- scoring, capture


def test_scores_over_two_gpus_equal_one_device(fake_devices):
    prompts, responses = examples()
    reference = score_tokenized(tiny_llama(), prompts, responses, batch_tokens=48)
    model = tiny_llama()
    with fake_devices.FakeDevices():
        first = spread(model, fake_devices)
        got = score_tokenized(model, prompts, responses, batch_tokens=48, device=first)
    assert got.n_forward == reference.n_forward > 2
    np.testing.assert_allclose(got.logprob_sum, reference.logprob_sum, rtol=0, atol=1e-5)


def _captured(model, fakedev, prompts, responses, read_offset=0):
    rows = sum(map(len, responses))
    heads = np.zeros((rows, 2, 4, 16), np.float16)
    resid = np.zeros((rows, 2, 64), np.float16)
    capture = ActivationCapture(model, 4)
    capture.target(heads=heads, resid=resid)
    with fakedev.FakeDevices() if fakedev else contextlib.nullcontext():
        first = spread(model, fakedev) if fakedev else None
        result = score_tokenized(
            model, prompts, responses, batch_tokens=48, capture=capture, device=first,
            read_offset=read_offset,
        )  # fmt: skip
    capture.remove()
    return result.logprob_sum, heads, resid


@pytest.mark.parametrize("read_offset", [0, 1])
def test_captured_activations_over_two_gpus_equal_one_device(fake_devices, read_offset):
    prompts, responses = examples(seed=2)
    scores, heads, resid = _captured(tiny_llama(), None, prompts, responses, read_offset)
    got = _captured(tiny_llama(), fake_devices, prompts, responses, read_offset)
    assert np.abs(heads).max() > 0 and np.abs(resid).max() > 0
    np.testing.assert_allclose(got[0], scores, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got[1], heads)
    np.testing.assert_array_equal(got[2], resid)


def test_select_cache_indexes_each_layer_on_its_device(fake_devices):
    model = tiny_llama().requires_grad_(False)
    ids = torch.randint(3, 300, (3, 5))
    with fake_devices.FakeDevices(), torch.inference_mode():
        first = spread(model, fake_devices)
        cache = model(input_ids=ids.to(first), use_cache=True).past_key_values
        assert {str(layer.keys.device) for layer in cache.layers} == {"fakegpu:0", "fakegpu:1"}
        rows = torch.tensor([2, 0, 0, 1], device=first)
        picked = scoring._select_cache(cache, rows)
        assert str(picked.layers[1].keys.device) == "fakegpu:1"
        assert torch.equal(picked.layers[1].keys.cpu(), cache.layers[1].keys.cpu()[[2, 0, 0, 1]])
        assert cache.layers[0].keys.shape[0] == 3  # the prompt cache is left intact


# --------------------------------------------------------------------------- reward heads


def test_classifier_rewards_over_two_gpus_equal_one_device(fake_devices):
    reference = example_rewards(ClassifierReward(tiny_classifier()), SEQS, 0, 2, "cpu")
    classifier = tiny_classifier()
    with fake_devices.FakeDevices():
        first = spread(classifier, fake_devices)
        assert classifier.score.weight.device == torch.device("fakegpu", 1)
        got = example_rewards(ClassifierReward(classifier), SEQS, 0, 2, first)
    for a, b in zip(got, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_trained_reward_model_predicts_over_two_gpus(fake_devices, tiny_dir, method):
    reference = example_rewards(own_reward_model(tiny_dir, method), SEQS, 0, 2, "cpu")
    model = own_reward_model(tiny_dir, method)
    with fake_devices.FakeDevices():
        first = place(model, fake_devices, fake_devices.FakeDevices.devices(2))
        got = example_rewards(model, SEQS, 0, 2, first)
    for a, b in zip(got, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- training


def _one_step(model, device):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)
    model.train()
    torch.manual_seed(5)  # the step's dropout keys
    loss, tokens = train_step(model, optimizer, PAIRS, 2, 0, device, 1.0)
    after = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss, tokens, after


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_training_step_over_a_gpu_and_the_cpu_equals_one_device(fake_devices, tiny_dir, method):
    _require_autograd(fake_devices)
    loss, tokens, after = _one_step(own_reward_model(tiny_dir, method), "cpu")
    model = own_reward_model(tiny_dir, method)
    with fake_devices.FakeDevices():
        devices = fake_devices.FakeDevices.devices(2, last_on_cpu=True)
        first = place(model, fake_devices, devices, hooks=True)
        trainable = [p for p in model.parameters() if p.requires_grad]
        # LoRA weights follow their layer; the head and the virtual tokens sit on GPU 0
        want = {"fakegpu", "cpu"} if method == "lora" else {"fakegpu"}
        assert {p.device.type for p in trainable} == want
        got_loss, got_tokens, got_after = _one_step(model, first)
    assert got_tokens == tokens and got_loss == pytest.approx(loss, abs=1e-6)
    assert got_after.keys() == after.keys()
    for name in after:
        torch.testing.assert_close(got_after[name], after[name], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- controls
# Each plants a device bug in a path above and shows that the harness catches it, so that the
# passes above mean something.


def test_control_scoring_with_the_mask_on_the_input_device(fake_devices, monkeypatch):
    """`_keep_rows` without moving the mask to the hidden states' device (the bug of issue 19,
    as the scorer before the fix had it: the mask made on the input device)."""

    @contextlib.contextmanager
    def keep_rows(model, keep):
        def select(module, args):
            return (args[0][keep], *args[1:])

        handle = model.get_output_embeddings().register_forward_pre_hook(select)
        try:
            yield
        finally:
            handle.remove()

    monkeypatch.setattr(scoring, "_keep_rows", keep_rows)
    _spread_scoring_fails(fake_devices, "indices")


def _spread_scoring_fails(fakedev, match, capture=None, model=None):
    prompts, responses = examples()
    model = model or tiny_llama()
    with fakedev.FakeDevices(), pytest.raises(fakedev.DeviceMismatch, match=match):
        first = spread(model, fakedev)
        score_tokenized(model, prompts, responses, batch_tokens=48, device=first, capture=capture)


def test_control_capture_without_moving_the_positions(fake_devices, monkeypatch):
    def hook(self, name, layer):  # the capture hook, minus moving its positions to x's device
        def run(module, args, kwargs=None):
            if self._pos is None or name not in self._targets:
                return
            x = args[0] if args else kwargs["hidden_states"]
            x[torch.arange(x.shape[0], device=x.device), self._pos]

        return run

    monkeypatch.setattr(ActivationCapture, "_hook", hook)
    model = tiny_llama()
    capture = ActivationCapture(model, 4)
    # `heads` reads o_proj's input, on layer 1's own device (fakegpu:1)
    capture.target(heads=np.zeros((18, 2, 4, 16), np.float16))
    _spread_scoring_fails(fake_devices, "fakegpu:1", capture, model)


def test_control_select_cache_with_one_index_tensor(fake_devices, monkeypatch):
    import copy

    def select(cache, rows):  # every layer indexed with the input device's rows
        new = copy.copy(cache)
        new.layers = [copy.copy(layer) for layer in cache.layers]
        for layer in new.layers:
            layer.batch_select_indices(rows)
        return new

    monkeypatch.setattr(scoring, "_select_cache", select)
    _spread_scoring_fails(fake_devices, "indices")


def test_control_classifier_without_moving_the_last_positions(fake_devices, monkeypatch):
    def forward(self, input_ids, attention_mask):
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(dim=1) - 1  # not moved to hidden.device
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return self.head(hidden[rows, last]).squeeze(-1)

    monkeypatch.setattr(ClassifierReward, "forward", forward)
    classifier = tiny_classifier()
    with fake_devices.FakeDevices(), pytest.raises(fake_devices.DeviceMismatch):
        first = spread(classifier, fake_devices)
        example_rewards(ClassifierReward(classifier), SEQS, 0, 2, first)


def test_control_training_without_moving_the_last_positions(fake_devices, tiny_dir, monkeypatch):
    _require_autograd(fake_devices)

    def last_hidden(self, input_ids, attention_mask):
        embeds = self.lm.get_input_embeddings()(input_ids)
        hidden = self._decoder(inputs_embeds=embeds, attention_mask=attention_mask)
        hidden = hidden.last_hidden_state
        last = attention_mask.sum(dim=1) - 1  # on the input device; `hidden` on the last one
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    monkeypatch.setattr(reward_model.RewardModel, "_last_hidden", last_hidden)
    model = own_reward_model(tiny_dir, "lora")
    with (
        fake_devices.FakeDevices(),
        pytest.raises(fake_devices.DeviceMismatch, match="indices on fakegpu:0"),
    ):
        first = place(model, fake_devices, fake_devices.FakeDevices.devices(2, True), hooks=True)
        _one_step(model, first)
