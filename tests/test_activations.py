import numpy as np
import pytest
import torch

from genies.forward.activations import (
    ActivationCapture,
    ActivationWriter,
    decoder_layers,
    load_activations,
)
from genies.forward.scoring import score_naive, score_tokenized
from genies.models.layout import activation_shapes, model_layout

from .fixtures import tiny_llama


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def make_data(seed, n, k):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, 300, rng.integers(1, 20)).tolist() for _ in range(n)]
    responses = [
        [rng.integers(3, 300, rng.integers(1, 9)).tolist() for _ in range(k)] for _ in range(n)
    ]
    return prompts, responses


def reference(model, prompt, response):
    """Last-token activations of prompt + response from a plain unpadded forward pass."""
    heads = []
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: heads.append(a[0][0, -1]))
        for layer in decoder_layers(model)
    ]
    with torch.inference_mode():
        out = model(torch.tensor([prompt + response]), output_hidden_states=True)
    for h in hooks:
        h.remove()
    resid = torch.stack([out.hidden_states[i][0, -1] for i in range(len(heads))])
    return resid.numpy(), torch.stack(heads).reshape(len(heads), 4, -1).numpy()


def _writer_and_capture(model, path, n_rows, resid_layers="all"):
    shapes = activation_shapes(n_rows, model_layout(model), True, resid_layers)
    writer = ActivationWriter(path, shapes, {"a": 1})
    capture = ActivationCapture(model, n_heads=4)
    layers = None if resid_layers == "all" else resid_layers
    capture.target(writer.arrays["heads"], writer.arrays["resid"], layers)
    return writer, capture


@pytest.mark.parametrize("batch_tokens", [8, 64, 4096])
def test_capture_matches_plain_forward(llama, tmp_path, batch_tokens):
    prompts, responses = make_data(1, 7, 3)
    n_rows = 7 * 3
    path = tmp_path / "acts.safetensors"
    writer, capture = _writer_and_capture(llama, path, n_rows)
    result = score_tokenized(llama, prompts, responses, batch_tokens=batch_tokens, capture=capture)
    capture.remove()
    writer.close()
    acts = load_activations(path)
    assert acts["resid"].shape == (n_rows, 2, 64) and acts["heads"].shape == (n_rows, 2, 4, 16)
    for ex in range(7):
        for j in range(3):
            row = ex * 3 + j
            resid, heads = reference(llama, prompts[ex], responses[ex][j])
            np.testing.assert_allclose(acts["resid"][row], resid, atol=2e-2, rtol=1e-2)
            np.testing.assert_allclose(acts["heads"][row], heads, atol=2e-2, rtol=1e-2)
    # Capturing does not change the scores.
    naive = score_naive(llama, prompts, responses)
    np.testing.assert_allclose(result.logprob_sum, naive.logprob_sum, atol=1e-4)
    assert not list(tmp_path.glob(".*tmp*"))


def test_capture_with_shared_response_starts(llama, tmp_path):
    # Responses that share their start (fed once, with the prompt): every response's last
    # token is still captured, including a response that is the start of the others.
    rng = np.random.default_rng(3)
    prompts, responses = [], []
    for shared, tails in ((5, [2, 1, 4]), (3, [0, 3, 1]), (1, [1, 1, 1])):
        start = rng.integers(3, 300, shared).tolist()
        prompts.append(rng.integers(3, 300, rng.integers(1, 10)).tolist())
        responses.append([start + rng.integers(3, 300, n).tolist() for n in tails])
    path = tmp_path / "acts.safetensors"
    writer, capture = _writer_and_capture(llama, path, 9)
    result = score_tokenized(llama, prompts, responses, batch_tokens=64, capture=capture)
    capture.remove()
    writer.close()
    acts = load_activations(path)
    for ex in range(3):
        for j in range(3):
            resid, heads = reference(llama, prompts[ex], responses[ex][j])
            np.testing.assert_allclose(acts["resid"][ex * 3 + j], resid, atol=2e-2, rtol=1e-2)
            np.testing.assert_allclose(acts["heads"][ex * 3 + j], heads, atol=2e-2, rtol=1e-2)
    naive = score_naive(llama, prompts, responses)
    np.testing.assert_allclose(result.logprob_sum, naive.logprob_sum, atol=1e-4)


def test_hooks_only_record_inside_capture(llama, tmp_path):
    prompts, responses = make_data(2, 3, 2)
    writer, capture = _writer_and_capture(llama, tmp_path / "a.safetensors", 6)
    with torch.inference_mode():
        llama(torch.tensor([prompts[0]]))  # outside capture(): nothing recorded
    assert not np.asarray(writer.arrays["resid"]).any()
    capture.remove()
    writer.abort()
    assert not (tmp_path / "a.safetensors").exists()
    assert not list(tmp_path.iterdir())


def test_capture_of_a_subset_of_residual_layers(llama, tmp_path):
    prompts, responses = make_data(4, 3, 2)
    writer, capture = _writer_and_capture(llama, tmp_path / "a.safetensors", 6, resid_layers=[1])
    score_tokenized(llama, prompts, responses, batch_tokens=32, capture=capture)
    capture.remove()
    writer.close()
    acts = load_activations(tmp_path / "a.safetensors")
    assert acts["resid"].shape == (6, 1, 64) and acts["heads"].shape == (6, 2, 4, 16)
    for ex in range(3):
        for j in range(2):
            resid, heads = reference(llama, prompts[ex], responses[ex][j])
            np.testing.assert_allclose(acts["resid"][ex * 2 + j, 0], resid[1], atol=2e-2, rtol=1e-2)
            np.testing.assert_allclose(acts["heads"][ex * 2 + j], heads, atol=2e-2, rtol=1e-2)
