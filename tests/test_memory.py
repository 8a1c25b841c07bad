"""Tests of genies.models.memory: budget, cost model, plans, keyed dropout and out-of-memory
back-off.

The memory model's figures against measured peaks are a benchmark (bench/bench_memory.py);
here: the budget arithmetic, the saved-activation estimate against the tensors autograd
really saves, that every plan computes the same result as one big batch, and that an
injected out-of-memory error is survived with the same result.
"""

from __future__ import annotations

import contextlib
import functools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import LlamaConfig

import genies.methods.tuned.reward_model as reward_model
from genies.data.materialise import examples_table
from genies.forward.scoring import score_naive, score_tokenized
from genies.methods.tuned.reward_model import (
    INFO_FILE,
    WEIGHTS_FILE,
    RewardModelError,
    build_reward_model,
    reward_predictions,
)
from genies.methods.tuned.training import (
    memory_plan,
    resolve_params,
    train_reward_model,
    train_step,
)
from genies.models.memory import (
    ALLOCATOR_OVERHEAD,
    GIB,
    Budget,
    MemoryPlanError,
    Shape,
    TrainingCosts,
    TrainingSetup,
    is_out_of_memory,
    plan_groups,
)
from genies.models.prepare import prepare_model
from tests.fixtures import make_examples, tiny_llama

LLAMA_7B = Shape(32, 4096, 32, 32, 128, 11008, 32000)
TINY = {"source": "tiny", "seed": 0, "hidden_size": 128, "num_heads": 4, "num_kv_heads": 2}
TRAIN = {
    "steps": 2,
    "batch_size": 8,
    "lr": 1e-2,
    "lora_r": 4,
    "lora_alpha": 8,
    "checkpoint_every": 2,
    "val_fraction": 0.25,
    "eval_batch_size": 16,
    "dtype": "float32",
    "device": "cpu",
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    prepare_model(TINY, root / "tiny")
    pq.write_table(examples_table("fx", "train", make_examples(40, 2, 1)), root / "train.parquet")
    return root


def _pairs(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return [
        (list(rng.integers(3, 500, rng.integers(5, 40))), list(rng.integers(3, 500, 12)))
        for _ in range(n)
    ]


def _budget_for(pairs_per_micro_batch: float, costs: TrainingCosts, width: int, ckpt=False):
    """A CPU budget that holds about this many pairs of `width` per micro-batch."""
    live = costs.fixed + pairs_per_micro_batch * 2 * costs.train_row(width, ckpt)
    return Budget(int(live * ALLOCATOR_OVERHEAD["cpu"]) + 1)


# ---------------------------------------------------------------------------- budget, shapes


def test_budget_settings_and_attempts():
    assert Budget.resolve(None, "cpu").bytes is None  # the CPU default: unlimited
    assert Budget.resolve({"budget_gb": None}, "cpu").usable is None
    one = Budget.resolve({"budget_gb": 1}, "cpu")
    assert one.bytes == GIB and one.usable == int(GIB / ALLOCATOR_OVERHEAD["cpu"])
    third = Budget.resolve({"budget_gb": 1}, "cpu", attempt=3)
    assert third.bytes == GIB // 4 and "attempt 3" in third.source
    assert third.cap(32) == 8 and third.cap(3) == 1 and third.cap(None) is None
    unlimited_retry = Budget.resolve(None, "cpu", attempt=2)
    assert unlimited_retry.bytes is None and unlimited_retry.cap(4096) == 2048
    record = json.loads(json.dumps(third.record()))
    assert record["budget_bytes"] == GIB // 4 and record["attempt"] == 3


def test_llama_7b_shape_figures():
    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        vocab_size=32000,
    )
    assert Shape.of(config) == LLAMA_7B
    assert LLAMA_7B.kv_bytes(2) == 512 * 1024  # 2 x 32 layers x 4096 x 2 bytes per position
    assert abs(LLAMA_7B.parameters() - 6.738e9) < 0.01e9  # LLaMA-7B has 6.74B parameters


def test_plan_groups_respects_row_caps_and_minimises_padding():
    lengths = np.array([50, 40, 40, 39, 10, 9, 9, 8], dtype=np.int64)
    caps = np.array([1, 2, 2, 2, 4, 4, 4, 4])

    def cost(groups):
        return sum(1 + (e - s) * lengths[s] for s, e in groups)

    best = None  # brute force over the 2**7 cuts
    for bits in range(2 ** (len(lengths) - 1)):
        cuts = [0] + [i + 1 for i in range(len(lengths) - 1) if bits >> i & 1] + [len(lengths)]
        groups = list(zip(cuts, cuts[1:], strict=False))
        if all(e - s <= caps[s] for s, e in groups) and (best is None or cost(groups) < best):
            best = cost(groups)
    groups = plan_groups(lengths, caps, call_overhead=1)
    assert cost(groups) == best and all(e - s <= caps[s] for s, e in groups)
    assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
    assert plan_groups(lengths, np.full(8, 100), call_overhead=1000) == [(0, 8)]


# ---------------------------------------------------------------------------- cost model


def _saved_bytes(model, ids, mask) -> int:
    """Bytes autograd saves for the backward pass (parameters excluded, storages once)."""
    params = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, mask, row_keys=torch.arange(ids.shape[0]))
    return sum(saved.values())


@pytest.mark.parametrize(
    "method, extra",
    [
        ("lora", {"dtype": "bfloat16"}),
        ("lora", {"dtype": "float32", "target_modules": ["q_proj", "o_proj", "down_proj"]}),
        ("prompt_tuning", {"dtype": "float32"}),
        ("lora", {"dtype": "bfloat16", "quantization": "nf4"}),  # float32 stream, autocast
    ],
)
@pytest.mark.parametrize("math", [False, True], ids=["fused", "math_attention"])
def test_saved_activation_estimate_matches_autograd(files, method, extra, math):
    """The per-token estimate of what each layer saves is within -2% and +15% of the truth,
    with the fused attention kernel and with the math one (deterministic training on CUDA:
    its float32 attention matrices; the math kernel saves the same on the CPU)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = resolve_params(method, {**TRAIN, "lora_dropout": 0.1, **extra})
    model, _ = build_reward_model(files / "tiny", params, seed=0, device="cpu")
    model.train()
    costs = TrainingCosts(TrainingSetup.of(model, math_attention=math))
    shape = costs.setup.shape
    for rows, width in ((4, 64), (2, 200)):
        ids = torch.randint(3, 400, (rows, width))
        mask = torch.ones(rows, width, dtype=torch.long)
        mask[0, width // 2 :] = 0
        w = width + costs.setup.virtual_tokens
        estimate = rows * w * (shape.num_layers * costs.layer(w) + 4 * shape.hidden_size + w)
        with sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext():
            truth = _saved_bytes(model, ids, mask)
        assert 0.98 * truth <= estimate <= 1.15 * truth, (estimate, truth)


def test_estimates_grow_as_expected():
    setup = TrainingSetup(LLAMA_7B, b=2, lora_inputs=(4096, 4096), lora_rank=64, trainable=1)
    costs = TrainingCosts(setup)
    plain, checkpointed = costs.train_row(512, False), costs.train_row(512, True)
    assert checkpointed < plain / 8  # one layer's input instead of its activations
    assert costs.train_row(1024, False) > 2 * plain  # the attention mask grows with the width
    quantized = TrainingCosts(TrainingSetup(LLAMA_7B, b=2, quantized=True, trainable=1))
    autocast = TrainingCosts(
        TrainingSetup(LLAMA_7B, b=2, quantized=True, autocast=True, trainable=1)
    )
    assert quantized.layer(512) > autocast.layer(512) > costs.layer(512) - 4096 * 2 * 4


# ---------------------------------------------------------------------------- training plans


def _step_grads(files, plan_of, pairs, dropout=0.1):
    """Gradients of one train_step of a fresh model (weights left unchanged)."""
    params = resolve_params("lora", {**TRAIN, "lora_dropout": dropout})
    model, _ = build_reward_model(files / "tiny", params, seed=0, device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    model.train()
    plan = plan_of(model, params)
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(123)  # the step's seed: dropout keys
    loss, _ = train_step(
        model, torch.optim.SGD(trainable, lr=0.0), pairs, plan, 0, "cpu", max_grad_norm=None
    )
    return loss, torch.cat([p.grad.flatten() for p in trainable]), plan


def test_planned_micro_batches_give_the_one_batch_gradient_with_dropout(files):
    """With the paper's LoRA dropout: micro-batches from a budget, and gradient checkpointing
    the plan turns on, compute the gradient of the whole batch in one forward pass."""
    pairs = _pairs()
    widths = [max(len(c), len(r)) for c, r in pairs]

    def costs_of(model):
        return TrainingCosts(TrainingSetup.of(model))

    def budgeted(pairs_per_micro_batch, ckpt=False):
        def plan_of(model, params):
            budget = _budget_for(pairs_per_micro_batch, costs_of(model), max(widths), ckpt)
            return memory_plan(model, params, budget, pairs)

        return plan_of

    def one_batch(model, params):
        return len(pairs)

    loss0, g0, _ = _step_grads(files, one_batch, pairs)
    loss1, g1, plan1 = _step_grads(files, budgeted(2.5), pairs)
    assert not plan1.checkpointing and len(plan1.pair_groups(widths)) >= 3
    loss2, g2, plan2 = _step_grads(files, budgeted(0.5, ckpt=True), pairs)  # 1 pair needs ckpt
    assert plan2.checkpointing and len(plan2.pair_groups(widths)) >= 4
    for loss, grad in ((loss1, g1), (loss2, g2)):
        assert loss == pytest.approx(loss0, rel=1e-5)
        torch.testing.assert_close(grad, g0, rtol=1e-4, atol=1e-6)
    _, g_no_dropout, _ = _step_grads(files, one_batch, pairs, dropout=0.0)
    assert not torch.allclose(g_no_dropout, g0, rtol=1e-3)  # the masks were really applied


def test_keyed_dropout_masks_depend_on_row_and_element_only():
    keys = reward_model.RowKeys()
    dropout = reward_model.KeyedDropout(0.25, module_key=3, keys=keys).train()
    x = torch.ones(3, 7, 16)
    keys.current = torch.tensor([5, 6, 7])
    full = dropout(x)
    keys.current = torch.tensor([6])
    assert torch.equal(dropout(x[1:2, :4]), full[1:2, :4])  # another batch, another width
    kept = (full != 0).float().mean().item()
    assert 0.6 < kept < 0.9 and torch.all(full[full != 0] == 1 / 0.75)
    assert not torch.equal(full[0], full[1])
    keys.current = None  # no keys: plain dropout
    assert dropout(x).shape == x.shape


# ---------------------------------------------------------------------------- out of memory


def _oom_above(limit_train: int, limit_eval: int, message: str | None = None):
    """A RewardModel.forward that runs out of memory above `limit` rows per forward."""
    original = reward_model.RewardModel.forward

    @functools.wraps(original)
    def forward(self, input_ids, attention_mask, row_keys=None):
        limit = limit_train if self.training else limit_eval
        if input_ids.shape[0] > limit:
            if message:
                raise RuntimeError(message)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return original(self, input_ids, attention_mask, row_keys)

    return forward


def _train(files, out, **kw):
    return train_reward_model(
        model_dir=files / "tiny",
        train_file=files / "train.parquet",
        out_dir=out,
        method="lora",
        params=TRAIN,
        seed=0,
        threads=1,
        **kw,
    )


def _weights(out):
    from safetensors.torch import load_file

    return load_file(out / WEIGHTS_FILE)


def test_training_under_a_tiny_budget_gives_the_unlimited_model(files):
    """One pair per micro-batch with gradient checkpointing (all a 1 kB budget allows) trains
    the model that one forward of all 8 pairs per step trains."""
    reference = _train(files, files / "unlimited")
    info = _train(files, files / "tiny-budget", memory={"budget_gb": 1e-6})
    plan = info["memory"]["plan"]
    assert plan["checkpointing"] and plan["activation_bytes"] == 0  # so one pair at a time
    assert info["memory"]["budget_bytes"] == int(1e-6 * GIB)
    assert reference["memory"]["budget_bytes"] is None
    assert not reference["memory"]["plan"]["checkpointing"]
    np.testing.assert_allclose(info["train_loss"], reference["train_loss"], rtol=1e-5)
    ref_w, got_w = _weights(files / "unlimited"), _weights(files / "tiny-budget")
    for name in ref_w:
        torch.testing.assert_close(got_w[name], ref_w[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("message", [None, "DefaultCPUAllocator: can't allocate memory: 9 GB"])
def test_training_survives_out_of_memory_with_the_same_model(files, monkeypatch, message):
    reference = _train(files, files / f"ref-{message is None}")
    monkeypatch.setattr(reward_model.RewardModel, "forward", _oom_above(4, 5, message))
    info = _train(files, files / f"oom-{message is None}")
    backoffs = [e for e in info["memory"]["events"] if e["kind"] == "backoff"]
    assert [e["failed_pairs"] for e in backoffs if "failed_pairs" in e] == [8, 4]
    assert [e["failed_rows"] for e in backoffs if "failed_rows" in e] == [16, 8]
    assert backoffs[0]["during"] == "training step 1"  # step 1 retried, not restarted
    assert info["memory"]["plan"]["max_pairs"] == 2 and info["memory"]["plan"]["backoffs"] == 4
    np.testing.assert_allclose(info["train_loss"], reference["train_loss"], rtol=1e-5)
    for a, b in zip(info["validation"], reference["validation"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    ref_w, got_w = (
        _weights(files / f"ref-{message is None}"),
        _weights(files / f"oom-{message is None}"),
    )
    assert ref_w.keys() == got_w.keys()
    for name in ref_w:
        torch.testing.assert_close(got_w[name], ref_w[name], rtol=1e-4, atol=1e-6)
    assert json.loads((files / f"oom-{message is None}" / INFO_FILE).read_text())["memory"]


def test_training_fails_clearly_when_one_pair_does_not_fit(files, monkeypatch):
    monkeypatch.setattr(reward_model.RewardModel, "forward", _oom_above(0, 100))
    with pytest.raises(RewardModelError) as err:
        _train(files, files / "oom-all")
    message = str(err.value)
    assert "out of GPU memory while training lora on fx at step 1" in message
    assert "Tried to allocate 9.00 GiB" in message and "max_length" in message
    assert err.value.__suppress_context__


def test_predictions_under_a_budget_and_out_of_memory_equal_plain_ones(files, monkeypatch):
    params = resolve_params("lora", {**TRAIN, "lora_dropout": 0.0})
    model, loaded = build_reward_model(files / "tiny", params, seed=0, device="cpu")
    examples = examples_table("fx", "test", make_examples(9, 3, seed=9))
    labels = {"model": "tiny", "intervention": "lora", "train": "fx", "eval_dataset": "fx"}
    kw = dict(labels=labels, batch_size=16, max_length=None, device="cpu")
    plain = reward_predictions(model, loaded.tokenizer, examples, **kw)
    costs = TrainingCosts(TrainingSetup.of(model, training=False))
    small = Budget(int(3 * costs.eval_row(60) * ALLOCATOR_OVERHEAD["cpu"]))
    planned = reward_predictions(model, loaded.tokenizer, examples, **kw, budget=small)
    monkeypatch.setattr(reward_model.RewardModel, "forward", _oom_above(0, 3))
    backed_off = reward_predictions(model, loaded.tokenizer, examples, **kw, budget=Budget(None))
    for table in (planned, backed_off):
        np.testing.assert_allclose(
            table.column("prob_preferred").to_numpy(),
            plain.column("prob_preferred").to_numpy(),
            rtol=1e-5,
        )


# ---------------------------------------------------------------------------- scoring


def _data(n=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(3, 300, rng.integers(2, 30))) for _ in range(n)]
    responses = [
        [list(rng.integers(3, 300, rng.integers(1, 20))) for _ in range(k)] for _ in prompts
    ]
    return prompts, responses


def _oom_model(model, rows: int, message: str | None = None):
    """`model` whose forward runs out of memory above `rows` rows (signature kept)."""
    original = model.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > rows:
            if message:
                raise RuntimeError(message)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args, **kwargs)

    model.forward = forward
    return model


@pytest.mark.parametrize("message", [None, "DefaultCPUAllocator: can't allocate memory: 5 GB"])
def test_scorer_survives_out_of_memory_with_the_same_scores(message):
    prompts, responses = _data()
    reference = score_tokenized(tiny_llama(), prompts, responses, batch_tokens=4096)
    budget = Budget(None)
    got = score_tokenized(
        _oom_model(tiny_llama(), 2, message), prompts, responses, batch_tokens=4096, budget=budget
    )
    np.testing.assert_allclose(got.logprob_sum, reference.logprob_sum, atol=1e-4, rtol=0)
    assert got.plan["backoffs"] and got.plan["batch_tokens"] == 4096
    assert [e["kind"] for e in budget.events].count("backoff") == len(got.plan["backoffs"])
    assert all(e["batch_tokens"] < 4096 for e in got.plan["backoffs"])


def test_scorer_fails_clearly_when_one_example_does_not_fit():
    prompts, responses = _data(n=3)
    with pytest.raises(MemoryPlanError, match="out of GPU memory while scoring one example"):
        score_tokenized(_oom_model(tiny_llama(), 0), prompts, responses, budget=Budget(None))


def test_scorer_plans_batch_tokens_within_the_budget():
    prompts, responses = _data(n=20)
    model = tiny_llama()
    plain = score_tokenized(model, prompts, responses, batch_tokens=4096)
    assert plain.plan["batch_tokens"] == 4096 and plain.plan["planned_peak_bytes"] > 0
    budget = Budget(plain.plan["planned_peak_bytes"] // 3)
    small = score_tokenized(model, prompts, responses, batch_tokens=4096, budget=budget)
    assert small.plan["batch_tokens"] < 4096
    assert small.plan["planned_peak_bytes"] <= budget.usable
    assert small.n_forward > plain.n_forward
    np.testing.assert_allclose(
        small.logprob_sum, score_naive(model, prompts, responses).logprob_sum, atol=1e-4
    )
    assert [e["kind"] for e in budget.events] == ["scoring"]


def test_is_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: 1 GB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("can't allocate memory"))
