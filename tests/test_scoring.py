"""Tests for genies.forward.scoring: prefix-reusing scorer against the per-pair oracle."""

from __future__ import annotations

import copy
import random
import warnings

import numpy as np
import pytest
import torch
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from genies.forward.scoring import (
    ScoreResult,
    _plan_groups,
    pair_probabilities,
    score_naive,
    score_tokenized,
)
from genies.forward.zero_shot import normalise
from genies.models.tokens import tokenize_examples

from .fixtures import tiny_llama

VOCAB = 300
ATOL = 1e-4
TORCH_THREADS = 1  # pinned by tests/conftest.py


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(vocab=VOCAB)


def make_data(seed, n, k, plen=(1, 20), rlen=(1, 15), vocab=VOCAB):
    """Random token ids; ``k`` may be an int or a (lo, hi) range per example."""
    rng = random.Random(seed)
    prompts, responses = [], []
    for _ in range(n):
        kk = k if isinstance(k, int) else rng.randint(*k)
        prompts.append([rng.randrange(vocab) for _ in range(rng.randint(*plen))])
        responses.append(
            [[rng.randrange(vocab) for _ in range(rng.randint(*rlen))] for _ in range(kk)]
        )
    return prompts, responses


def assert_close(a: ScoreResult, b: ScoreResult, atol=ATOL):
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.n_tokens, b.n_tokens)
    np.testing.assert_array_equal(a.example_index, b.example_index)
    np.testing.assert_array_equal(a.response_index, b.response_index)
    assert a.logprob_sum.dtype == np.float64
    assert np.all(np.isfinite(a.logprob_sum))
    np.testing.assert_allclose(a.logprob_sum, b.logprob_sum, rtol=0, atol=atol)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("batch_tokens", [1, 24, 100, 1_000_000])
def test_matches_naive(llama, k, batch_tokens):
    prompts, responses = make_data(k * 7 + batch_tokens, 10, k)
    fast = score_tokenized(llama, prompts, responses, batch_tokens=batch_tokens)
    assert_close(fast, score_naive(llama, prompts, responses))


def test_batch_tokens_controls_forward_calls(llama):
    prompts, responses = make_data(1, 12, 2)
    many = score_tokenized(llama, prompts, responses, batch_tokens=1)
    one = score_tokenized(llama, prompts, responses, batch_tokens=1_000_000)
    # budget 1: one prompt pass per example plus one call per response longer than 1
    n_multi = sum(len(r) > 1 for rs in responses for r in rs)
    assert many.n_forward == len(prompts) + n_multi
    # a large budget merges calls: only the per-call overhead trade-off splits them
    assert one.n_forward <= many.n_forward // 4
    np.testing.assert_allclose(many.logprob_sum, one.logprob_sum, atol=ATOL, rtol=0)


def test_single_token_responses_and_prompts(llama):
    prompts, responses = make_data(2, 8, 3, plen=(1, 1), rlen=(1, 1))
    fast = score_tokenized(llama, prompts, responses, batch_tokens=16)
    assert_close(fast, score_naive(llama, prompts, responses))
    assert fast.n_forward == 1  # one prompt pass for all 8 examples, no response pass
    assert fast.tokens_processed == len(prompts)  # only the prompts were fed

    prompts, responses = make_data(3, 9, 2, plen=(1, 1), rlen=(1, 12))
    assert_close(
        score_tokenized(llama, prompts, responses, batch_tokens=20),
        score_naive(llama, prompts, responses),
    )


def shared_start_data(seed):
    """Examples whose responses share a start: long, one token, a whole response (a response
    that is the start of the others, or identical responses), and none."""
    rng = random.Random(seed)

    def toks(n):
        return [rng.randrange(VOCAB) for _ in range(n)]

    prompts, responses = [], []
    for shared, tails in (
        (12, [5, 1, 9, 3]),
        (1, [4, 6]),
        (6, [0, 4, 2]),  # the first response is exactly the shared start
        (7, [3, 3]),
        (0, [6, 2, 5]),
        (20, [1, 1, 1]),
    ):
        start = toks(shared)
        prompts.append(toks(rng.randint(1, 15)))
        responses.append([start + toks(n) for n in tails])
    tail = toks(5)
    prompts.append(toks(3))
    responses.append([list(tail), list(tail)])  # identical responses
    return prompts, responses


@pytest.mark.parametrize("batch_tokens", [1, 40, 4096])
def test_shared_response_start_is_fed_once(llama, batch_tokens):
    prompts, responses = shared_start_data(6)
    fast = score_tokenized(llama, prompts, responses, batch_tokens=batch_tokens)
    assert_close(fast, score_naive(llama, prompts, responses))
    if batch_tokens == 4096:  # no padding: exactly what a prefix-sharing scorer must feed
        # each example: prompt + shared start, then each response's rest minus its last token
        starts = [12, 1, 5, 7, 0, 20, 4]  # the last response keeps at least one token
        needed = sum(
            len(p) + c + sum(len(r) - c - 1 for r in rs)
            for p, rs, c in zip(prompts, responses, starts, strict=True)
        )
        assert fast.tokens_needed == needed
        assert fast.tokens_needed < fast.tokens_unique - sum(starts)


def test_mixed_lengths_within_example(llama):
    rng = random.Random(4)
    prompts = [[rng.randrange(VOCAB) for _ in range(n)] for n in (1, 17, 5, 30)]
    responses = [
        [[rng.randrange(VOCAB) for _ in range(n)] for n in lens]
        for lens in ([1, 25], [9, 1, 14], [2, 2], [40, 3, 1, 7])
    ]
    for bt in (1, 30, 4096):
        fast = score_tokenized(llama, prompts, responses, batch_tokens=bt)
        assert_close(fast, score_naive(llama, prompts, responses))


def test_variable_k_and_empty(llama):
    prompts, responses = make_data(5, 10, (1, 4))
    responses[3] = []  # an example without responses
    responses[6][0] = []  # an empty response scores 0 with 0 tokens
    fast = score_tokenized(llama, prompts, responses, batch_tokens=64)
    assert_close(fast, score_naive(llama, prompts, responses))
    lp, nt = fast.example(6)
    assert lp[0] == 0.0 and nt[0] == 0
    assert len(fast.example(3)[0]) == 0
    with pytest.raises(ValueError, match="different numbers"):
        fast.as_matrix()
    per_lp, per_nt = fast.per_example()
    assert [len(x) for x in per_lp] == [len(rs) for rs in responses]
    assert [list(x) for x in per_nt] == [[len(r) for r in rs] for rs in responses]


def test_empty_prompt_rejected(llama):
    with pytest.raises(ValueError, match="empty prompt"):
        score_tokenized(llama, [[]], [[[5, 6]]])
    with pytest.raises(ValueError, match="prompts but"):
        score_tokenized(llama, [[1]], [])


def test_eager_attention_matches(llama):
    eager = tiny_llama("eager", vocab=VOCAB)
    prompts, responses = make_data(6, 8, 3)
    fast = score_tokenized(eager, prompts, responses, batch_tokens=50)
    assert_close(fast, score_naive(llama, prompts, responses))


def test_gpt_neox(llama):
    torch.manual_seed(1)
    cfg = GPTNeoXConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        rotary_pct=0.25,
    )
    model = GPTNeoXForCausalLM(cfg).eval()
    prompts, responses = make_data(7, 8, 2)
    for bt in (1, 40, 4096):
        fast = score_tokenized(model, prompts, responses, batch_tokens=bt)
        assert_close(fast, score_naive(model, prompts, responses))


def test_sliding_window_model():
    torch.manual_seed(2)
    cfg = MistralConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        sliding_window=64,
    )
    model = MistralForCausalLM(cfg).eval()
    prompts, responses = make_data(8, 8, 2)  # all sequences fit in the window
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = score_tokenized(model, prompts, responses, batch_tokens=60)
    assert_close(fast, score_naive(model, prompts, responses))
    long_p, long_r = make_data(9, 2, 2, plen=(60, 60), rlen=(10, 10))
    with pytest.warns(UserWarning, match="sliding window"):
        score_tokenized(model, long_p, long_r)


class _NoKeepWrapper(torch.nn.Module):
    """A model whose forward does not accept ``logits_to_keep``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, **cache):
        # **cache: the KV cache, under the name the inner model gives it in its output
        return self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **cache,
        )


def test_model_without_logits_to_keep(llama):
    prompts, responses = make_data(10, 8, 3)
    fast = score_tokenized(_NoKeepWrapper(llama), prompts, responses, batch_tokens=50)
    assert_close(fast, score_naive(llama, prompts, responses))


def test_training_mode_restored(llama):
    model = copy.deepcopy(llama).train()
    prompts, responses = make_data(11, 4, 2)
    fast = score_tokenized(model, prompts, responses)
    assert model.training
    assert_close(fast, score_naive(llama, prompts, responses))


# --------------------------------------------------------------------------- order, counters


def test_order_restored(llama):
    prompts, responses = make_data(12, 15, 3)
    base = score_tokenized(llama, prompts, responses, batch_tokens=40)
    base_lp, base_nt = base.as_matrix()
    perm = np.random.default_rng(0).permutation(len(prompts))
    inner = [list(np.random.default_rng(int(i)).permutation(3)) for i in range(len(prompts))]
    p2 = [prompts[i] for i in perm]
    r2 = [[responses[i][j] for j in inner[n]] for n, i in enumerate(perm)]
    shuf = score_tokenized(llama, p2, r2, batch_tokens=40)
    lp, nt = shuf.as_matrix()
    for n, i in enumerate(perm):
        np.testing.assert_allclose(lp[n], base_lp[i][inner[n]], atol=ATOL, rtol=0)
        np.testing.assert_array_equal(nt[n], base_nt[i][inner[n]])
    assert list(shuf.example_index) == [n for n in range(len(p2)) for _ in range(3)]
    assert list(shuf.response_index) == [0, 1, 2] * len(p2)


def _record_calls(model):
    calls = []

    def hook(module, args, kwargs):
        calls.append(
            (
                kwargs["input_ids"].clone(),
                kwargs["attention_mask"].clone(),
                # the KV cache: `cache` since transformers 5.24, `past_key_values` before
                any(kwargs.get(name) is not None for name in ("cache", "past_key_values")),
            )
        )

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_prompts_fed_once_and_counters_equal_lengths(llama):
    k, n, lp, lr = 3, 6, 9, 5
    prompts, responses = make_data(13, n, k, plen=(lp, lp), rlen=(lr, lr))
    calls, handle = _record_calls(llama)
    try:
        res = score_tokenized(llama, prompts, responses, batch_tokens=40)
    finally:
        handle.remove()
    assert res.tokens_unique == n * (lp + k * lr)
    assert res.tokens_needed == n * (lp + k * (lr - 1))
    assert res.tokens_processed == res.tokens_needed  # no padding at all
    assert res.padding_overhead == 1.0
    assert res.tokens_processed == sum(ids.numel() for ids, _, _ in calls)
    assert res.n_forward == len(calls)
    # every prompt went through the model exactly once, in a prompt pass
    fed_prompts = sorted(
        tuple(row[m.bool()].tolist())
        for ids, mask, has_past in calls
        if not has_past
        for row, m in zip(ids, mask, strict=True)
    )
    assert fed_prompts == sorted(tuple(p) for p in prompts)
    # the response passes hold each response minus its last token, once
    fed_resp = sorted(tuple(row.tolist()) for ids, _, has_past in calls if has_past for row in ids)
    assert fed_resp == sorted(tuple(r[:-1]) for rs in responses for r in rs)


def test_counters_varied_lengths(llama):
    prompts, responses = make_data(14, 20, 2, plen=(1, 30), rlen=(1, 30))
    calls, handle = _record_calls(llama)
    try:
        res = score_tokenized(llama, prompts, responses, batch_tokens=64)
    finally:
        handle.remove()
    unique = sum(len(p) + sum(len(r) for r in rs) for p, rs in zip(prompts, responses, strict=True))
    assert res.tokens_unique == unique
    assert res.tokens_processed == sum(ids.numel() for ids, _, _ in calls)
    assert res.tokens_processed >= res.tokens_needed
    assert res.padding_overhead >= 1.0
    # the prompt passes feed every prompt token once (plus padding), never more
    prompt_real = sum(int(m.sum()) for _, m, has_past in calls if not has_past)
    assert prompt_real == sum(len(p) for p in prompts)
    naive = score_naive(llama, prompts, responses)
    assert naive.tokens_processed == sum(
        len(p) + len(r) for p, rs in zip(prompts, responses, strict=True) for r in rs
    )


def test_deterministic_and_progress(llama):
    prompts, responses = make_data(15, 12, 2)
    seen = []
    a = score_tokenized(
        llama, prompts, responses, batch_tokens=30, progress=lambda d, t: seen.append((d, t))
    )
    b = score_tokenized(llama, prompts, responses, batch_tokens=30)
    np.testing.assert_array_equal(a.logprob_sum, b.logprob_sum)
    np.testing.assert_array_equal(a.n_tokens, b.n_tokens)
    assert seen and seen[-1] == (12, 12)
    assert all(t == 12 for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_bf16_close_to_fp32(llama):
    model = copy.deepcopy(llama).to(torch.bfloat16)
    prompts, responses = make_data(16, 10, 2)
    ref = score_naive(llama, prompts, responses)
    got = score_tokenized(model, prompts, responses, batch_tokens=64)
    assert got.logprob_sum.dtype == np.float64
    assert np.all(np.isfinite(got.logprob_sum))
    # bf16 keeps ~3 significant digits: allow 2% of the magnitude per response
    np.testing.assert_allclose(got.logprob_sum, ref.logprob_sum, rtol=2e-2, atol=0.05)


def test_plan_groups_budget():
    lengths = np.array(sorted([1, 3, 3, 7, 8, 20, 20, 21, 50, 300, 2], reverse=True))
    for bt in (1, 16, 64, 1000):
        groups = _plan_groups(lengths, bt)
        assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
        for (_, e), (s2, _) in zip(groups, groups[1:], strict=False):
            assert e == s2
        for s, e in groups:
            assert e - s == 1 or (e - s) * lengths[s] <= bt
    assert _plan_groups(np.array([], dtype=np.int64), 10) == []


# --------------------------------------------------------------------------- post-processing


def test_pair_probabilities_stable():
    # underflow to exactly 0/1 is fine; overflow, invalid (NaN) or divide-by-zero are not
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        p = pair_probabilities(
            [0.0, 1e300, -1e300, np.inf, -np.inf, 1000.0, -1000.0, 3.0],
            [0.0, -1e300, 1e300, 0.0, 0.0, 0.0, 0.0, 1.0],
        )
    np.testing.assert_allclose(p, [0.5, 1, 0, 1, 0, 1, 0, 1 / (1 + np.exp(-2.0))], rtol=1e-12)
    assert np.all(np.isfinite(p))
    d = np.linspace(-50, 50, 101)
    np.testing.assert_allclose(pair_probabilities(d, 0) + pair_probabilities(-d, 0), 1.0)
    assert 0 < pair_probabilities(-700.0, 0.0) < 1e-300  # accurate far into the tail


def test_normalise():
    lp = np.array([-10.0, -3.0])
    nt = np.array([5, 3])
    np.testing.assert_array_equal(normalise(lp, nt, "sum"), lp)
    np.testing.assert_array_equal(normalise(lp, nt, "mean"), [-2.0, -1.0])
    with pytest.raises(ValueError, match="unknown"):
        normalise(lp, nt, "median")
    with pytest.raises(ValueError, match="n_tokens"):
        normalise(lp, np.array([0, 3]), "mean")


# --------------------------------------------------------------------------- tokenising


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "hello", "world", "how", "are", "you", "fine"]
    words += ["thanks", "?", ".", "i", "am"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def test_tokenize_examples(tokenizer):
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = ["hello world how are you ?", "how are you"]
    responses = [[" i am fine .", " thanks"], [" fine", " i am"]]
    p_ids, r_ids = tokenize_examples(tokenizer, prompts, responses)
    assert len(p_ids) == 2 and [len(r) for r in r_ids] == [2, 2]
    for text, ids in zip(prompts, p_ids, strict=True):
        assert ids[0] == bos and ids.count(bos) == 1
        assert ids[1:] == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert eos not in ids and pad not in ids
    for texts, group in zip(responses, r_ids, strict=True):
        for text, ids in zip(texts, group, strict=True):
            assert ids[-1] == eos and ids.count(eos) == 1
            assert ids[:-1] == tokenizer(text, add_special_tokens=False)["input_ids"]
            assert bos not in ids and pad not in ids
    assert p_ids[0] == [bos, 4, 5, 6, 7, 8, 11]
    assert r_ids[0] == [[13, 14, 9, 12, eos], [10, eos]]

    p2, r2 = tokenize_examples(tokenizer, prompts, responses, add_bos=False, append_eos=False)
    assert p2 == [p[1:] for p in p_ids]
    assert r2 == [[r[:-1] for r in rs] for rs in r_ids]


def test_tokenize_empty_prompt_fallback(tokenizer):
    p, r = tokenize_examples(tokenizer, [""], [["fine", ""]])
    assert p == [[tokenizer.bos_token_id]]
    assert r == [[[9, tokenizer.eos_token_id], [tokenizer.eos_token_id]]]
    p, _ = tokenize_examples(tokenizer, [""], [["fine"]], add_bos=False)
    assert p == [[tokenizer.bos_token_id]]  # still >= 1 token
    with pytest.raises(ValueError, match="prompts but"):
        tokenize_examples(tokenizer, ["a"], [])


def test_tokenize_then_score(tokenizer, llama):
    p_ids, r_ids = tokenize_examples(
        tokenizer, ["hello world", "how are you ?"], [[" fine", " i am fine"], [" thanks", "."]]
    )
    fast = score_tokenized(llama, p_ids, r_ids)
    assert_close(fast, score_naive(llama, p_ids, r_ids))
    np.testing.assert_array_equal(fast.n_tokens, [2, 4, 2, 2])
