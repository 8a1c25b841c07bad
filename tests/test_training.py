"""Tests of genies.methods.tuned.training: learning, best-checkpoint selection, resume after kills,
determinism.

Runs on the tiny model with a trivially separable fixture (the preferred response starts with
"good"). The resume tests run training in a subprocess, kill it after it wrote a checkpoint
and compare the resumed result with an uninterrupted run, byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import genies.methods.tuned.training as training
from genies.data.materialise import examples_table
from genies.methods.tuned.checkpoints import latest_checkpoint
from genies.methods.tuned.reward_model import (
    INFO_FILE,
    WEIGHTS_FILE,
    RewardModelError,
    build_reward_model,
    predict_reward_model,
)
from genies.methods.tuned.training import (
    TrainingInterrupted,
    best_step,
    resolve_params,
    train_reward_model,
    train_step,
)
from genies.methods.tuned.training_data import PairOrder, choose_pairs, split_rows
from genies.models.prepare import prepare_model
from tests.fixtures import make_examples

REPO = Path(__file__).resolve().parent.parent
THREADS = 1
TORCH_THREADS = THREADS  # pinned by tests/conftest.py
# 36 training pairs, 12 held-out examples; 12 steps of 8 pairs, checkpoints at 4, 8, 12.
LORA = {
    "steps": 12,
    "batch_size": 8,
    "lr": 1e-2,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.1,
    "checkpoint_every": 4,
    "val_fraction": 0.25,
    "eval_batch_size": 16,
    "dtype": "float32",
    "device": "cpu",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    prepare_model({"source": "tiny", "seed": 0}, root / "tiny")
    pq.write_table(examples_table("fx", "train", make_examples(48, 2, 1)), root / "train.parquet")
    pq.write_table(examples_table("fx", "test", make_examples(24, 3, 2)), root / "test.parquet")
    return root


def _train(files, out, method="lora", params=LORA, **kw):
    return train_reward_model(
        model_dir=files / "tiny",
        train_file=files / "train.parquet",
        out_dir=out,
        method=method,
        params=params,
        seed=0,
        threads=THREADS,
        **kw,
    )


def _predict(files, adapter, out):
    predict_reward_model(
        model_dir=files / "tiny",
        adapter_dir=adapter,
        data_file=files / "test.parquet",
        out_path=out,
        model_name="tiny",
        intervention="lora",
        train="fx",
        eval_dataset="fx",
        threads=THREADS,
    )
    return pq.read_table(out)


@pytest.fixture(scope="module")
def reference(files):
    """One uninterrupted LoRA run: its record, adapter bytes and test predictions."""
    out = files / "reference"
    info = _train(files, out)
    preds = _predict(files, out, files / "reference.parquet")
    return info, (out / WEIGHTS_FILE).read_bytes(), preds


# ---------------------------------------------------------------------------- learning


def test_lora_learns_the_marker(files, reference):
    info, _, preds = reference
    val = info["validation"]
    assert [v["step"] for v in val] == [4, 8, 12]
    assert val[-1]["loss"] < val[0]["loss"] and min(v["loss"] for v in val) < 0.2
    assert max(v["accuracy"] for v in val) >= 0.9
    assert np.mean(info["train_loss"][-3:]) < 0.5 * info["train_loss"][0]
    assert info["n_train_pairs"] == 36 and info["n_validation_pairs"] == 12
    assert info["best_step"] == best_step(val)
    assert preds.num_rows == 24 * 2
    assert np.mean(preds.column("correct").to_numpy()) >= 0.9
    # after success the work dir keeps only the selected weights, for a rerun to reuse
    kept = sorted(p.name for p in (files / "reference.partial").rglob("*.*"))
    assert kept == ["best.safetensors", "run.json", "state.json"]


def test_prompt_tuning_learns_the_marker(files):
    params = {**LORA, "lr": 5e-2, "steps": 24, "checkpoint_every": 8}
    info = _train(files, files / "pt", method="prompt_tuning", params=params)
    val = info["validation"]
    assert val[-1]["loss"] < val[0]["loss"] and min(v["loss"] for v in val) < 0.3
    assert max(v["accuracy"] for v in val) >= 0.9
    assert info["trainable_parameters"] == 10 * 64 + 64  # virtual tokens + head
    preds = _predict(files, files / "pt", files / "pt.parquet")
    assert np.mean(preds.column("correct").to_numpy()) >= 0.9


def test_qlora_trains_on_cpu(files):
    params = {**LORA, "steps": 4, "checkpoint_every": 2, "quantization": "nf4"}
    info = _train(files, files / "qlora", params=params)
    assert info["provenance"]["dtype"] == "float32" and info["params"]["quantization"] == "nf4"
    assert all(np.isfinite(v["loss"]) for v in info["validation"])
    assert info["train_loss"][-1] < info["train_loss"][0]
    preds = _predict(files, files / "qlora", files / "qlora.parquet")
    assert preds.num_rows == 48


# ---------------------------------------------------------------------------- determinism


def test_same_config_gives_identical_adapter_and_predictions(files, reference):
    _, weights, preds = reference
    _train(files, files / "again")
    assert (files / "again" / WEIGHTS_FILE).read_bytes() == weights
    assert _predict(files, files / "again", files / "again.parquet").equals(preds)


def test_deterministic_training_is_math_attention_on_cuda_only():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = resolve_params("lora", {})
    assert params["deterministic"] is True
    assert training.math_attention(params, "cuda") and not training.math_attention(params, "cpu")
    assert not training.math_attention({**params, "deterministic": False}, "cuda")
    with pytest.raises(RewardModelError, match="deterministic must be true or false"):
        resolve_params("lora", {"deterministic": "yes"})
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # a caller's setting is what the CPU keeps
        with training.training_kernels(params, "cpu"):
            assert torch.backends.cuda.flash_sdp_enabled()
        with training.training_kernels(params, "cuda"):
            assert torch.backends.cuda.math_sdp_enabled()
            assert not torch.backends.cuda.flash_sdp_enabled()
            assert not torch.backends.cuda.mem_efficient_sdp_enabled()


def test_deterministic_cuda_setup_comes_before_cuda(monkeypatch):
    params = resolve_params("lora", {})
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    training.prepare_determinism(params, "cpu")
    assert (
        "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        and not torch.are_deterministic_algorithms_enabled()
    )
    try:
        training.prepare_determinism(params, "cuda")
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_the_whole_training_loop_runs_in_the_math_kernel(files, reference, monkeypatch):
    """With math attention forced (as on CUDA), a training with gradient checkpointing (whose
    backward recomputes each layer: outside the kernel context it raises CheckpointError)
    plans the attention matrices and trains the model of the fused kernel, to rounding."""
    kernels = []
    original = training.train_step

    def train_step(*args, **kwargs):
        kernels.append(torch.backends.cuda.math_sdp_enabled()
                       and not torch.backends.cuda.flash_sdp_enabled())  # fmt: skip
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "math_attention", lambda params, device: True)
    monkeypatch.setattr(training, "prepare_determinism", lambda params, device: None)
    monkeypatch.setattr(training, "train_step", train_step)
    params = {**LORA, "gradient_checkpointing": True}
    info = _train(files, files / "math", params=params)
    assert kernels == [True] * LORA["steps"]
    assert info["memory"]["plan"]["math_attention"] and info["memory"]["plan"]["checkpointing"]
    monkeypatch.undo()
    fused = _train(files, files / "fused-checkpointed", params=params)
    np.testing.assert_allclose(info["train_loss"], fused["train_loss"], rtol=1e-5)
    assert not fused["memory"]["plan"]["math_attention"]


def test_seeded_split_pairs_and_order():
    table = examples_table("fx", "train", make_examples(30, 4, 5))
    train, val = split_rows(30, 0.2, seed=0, dataset="fx")
    assert len(val) == 6 and not set(train) & set(val) and len(train) + len(val) == 30
    assert np.array_equal(split_rows(30, 0.2, 0, "fx")[1], val)
    assert not np.array_equal(split_rows(30, 0.2, 0, "other")[1], val)  # dataset in the seed
    pairs = choose_pairs(table, train, seed=0, dataset="fx")
    assert pairs == choose_pairs(table, train, seed=0, dataset="fx")
    pref = table.column("preferred").to_pylist()
    assert all(p == pref[r] and d != p for r, p, d in pairs)
    assert len({d for _, _, d in pairs}) > 1  # the dispreferred response really varies
    order = PairOrder(10, 4, seed=0, dataset="fx")
    epoch = [i for s in (1, 2) for i in order.batch(s)] + order.batch(3)[:2]
    assert sorted(epoch) == list(range(10))  # each pair once per epoch
    assert order.batch(3) == PairOrder(10, 4, seed=0, dataset="fx").batch(3)


def test_micro_batches_and_checkpointing_give_the_same_gradient(files):
    """Gradient accumulation over micro-batches and gradient checkpointing are exact
    reformulations of one full-batch step (up to float rounding)."""
    rng = np.random.default_rng(0)
    pairs = [
        (list(rng.integers(3, 500, rng.integers(5, 30))), list(rng.integers(3, 500, 9)))
        for _ in range(8)
    ]
    grads = []
    for micro, checkpointing in ((8, False), (3, False), (8, True)):
        params = resolve_params(
            "lora", {**LORA, "lora_dropout": 0.0, "gradient_checkpointing": checkpointing}
        )
        model, _ = build_reward_model(files / "tiny", params, seed=0, device="cpu")
        model.train()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.05)
        trainable = [p for p in model.parameters() if p.requires_grad]
        frozen = torch.optim.SGD(trainable, lr=0.0)  # keeps the weights, leaves the grads
        train_step(model, frozen, pairs, micro, 0, "cpu", max_grad_norm=None)
        grads.append(torch.cat([p.grad.flatten() for p in trainable]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[2], grads[0], rtol=1e-4, atol=1e-6)
    assert grads[0].abs().sum() > 0


# ---------------------------------------------------------------------------- selection


def test_lowest_validation_loss_checkpoint_is_kept(files, monkeypatch):
    """Injected validation losses 0.9, 0.5, 0.7 at steps 4, 8, 12: step 8 must win, and the
    final adapter must be exactly the step-8 weights (= an 8-step run's only candidate)."""
    losses = iter([0.9, 0.5, 0.7, 0.9, 0.5])
    monkeypatch.setattr(training, "validation_loss", lambda *a, **k: (next(losses), 1.0))
    info = _train(files, files / "sel12")
    assert info["best_step"] == 8
    assert [v["loss"] for v in info["validation"]] == [0.9, 0.5, 0.7]
    _train(files, files / "sel8", params={**LORA, "steps": 8})
    assert (files / "sel12" / WEIGHTS_FILE).read_bytes() == (
        files / "sel8" / WEIGHTS_FILE
    ).read_bytes()


def test_best_step_rules():
    hist = [{"step": 4, "loss": 0.5}, {"step": 8, "loss": 0.5}, {"step": 12, "loss": 0.6}]
    assert best_step(hist) == 4  # earliest on ties
    assert best_step([{"step": 4, "loss": float("nan")}, {"step": 8, "loss": 3.0}]) == 8
    assert best_step([]) is None


# ---------------------------------------------------------------------------- resume

CHILD = textwrap.dedent(
    """
    import json, logging, sys, time
    import genies.methods.tuned.training as training

    logging.basicConfig(level=logging.INFO)
    args = json.loads(sys.argv[1])
    step = training.train_step
    calls = []

    def slow_step(*a, **k):  # slow enough to be killed mid-run; sleeping changes no numbers
        calls.append(1)
        if len(calls) == args["mark_step"]:  # tell the test that this step has begun
            open(args["mark_file"], "w").close()
        time.sleep(args["delay"])
        return step(*a, **k)

    training.train_step = slow_step
    training.train_reward_model(
        model_dir=args["model_dir"], train_file=args["train_file"], out_dir=args["out_dir"],
        method="lora", params=args["params"], seed=0, threads=args["threads"],
    )
    """
)


def _start_child(files, out: Path, mark_step: int, delay=0.3) -> subprocess.Popen:
    args = {
        "mark_step": mark_step,
        "mark_file": str(out) + ".mark",
        "model_dir": str(files / "tiny"),
        "train_file": str(files / "train.parquet"),
        "out_dir": str(out),
        "params": LORA,
        "threads": THREADS,
        "delay": delay,
    }
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_mark(proc, out: Path, timeout=180.0) -> None:
    """Wait until the child has begun its marked step (start-up takes ~10 s: peft imports)."""
    mark = Path(str(out) + ".mark")
    deadline = time.time() + timeout
    while not mark.exists():
        if proc.poll() is not None:
            pytest.fail(f"training child exited early:\n{proc.stdout.read()}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("the training child did not reach its marked step in time")
        time.sleep(0.02)


def _step_of(checkpoint: Path) -> int:
    return json.loads((checkpoint / "state.json").read_text())["step"]


def test_resume_after_sigkill_matches_uninterrupted_run(files, reference):
    _, weights, preds = reference
    out, work = files / "killed", files / "killed.partial"
    proc = _start_child(files, out, mark_step=6)
    _wait_for_mark(proc, out)
    proc.send_signal(signal.SIGKILL)  # in step 6: steps 5-6 are lost
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert _step_of(latest_checkpoint(work)) == 4
    half = work / ".tmp-step-000008-99999"  # as if killed while writing a checkpoint
    half.mkdir()
    (half / "trainable.safetensors").write_bytes(b"garbage")
    info = _train(files, out)  # the rerun finds the work dir next to the output
    assert info["resumed_from"] == [4]
    assert (out / WEIGHTS_FILE).read_bytes() == weights
    assert _predict(files, out, files / "killed.parquet").equals(preds)
    assert info["validation"] == reference[0]["validation"]
    assert info["train_loss"] == reference[0]["train_loss"]
    assert json.loads((latest_checkpoint(work) / "state.json").read_text())["finished"]


def test_sigterm_writes_checkpoint_and_resume_matches(files, reference):
    _, weights, _ = reference
    out, work = files / "termed", files / "termed.partial"
    proc = _start_child(files, out, mark_step=6)
    _wait_for_mark(proc, out)
    proc.send_signal(signal.SIGTERM)  # in step 6: it finishes the step, checkpoints, stops
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "TrainingInterrupted: stopped by signal 15 after step 6" in output, output[-2000:]
    checkpoint = latest_checkpoint(work)
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["step"] == 6 and len(state["train_loss"]) == 6  # off the 4-step grid
    assert state["best_step"] == 4 and [v["step"] for v in state["validation"]] == [4]
    info = _train(files, out)
    assert info["resumed_from"] == [6]
    assert (out / WEIGHTS_FILE).read_bytes() == weights
    assert info["train_loss"] == reference[0]["train_loss"]


def test_stale_work_dir_of_other_params_is_discarded(files, reference, monkeypatch):
    """Checkpoints of a different config must never be resumed."""
    out = files / "stale"

    real = training.validation_loss
    calls = []

    def stop_at_second_validation(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise TrainingInterrupted("test stop")
        return real(*a, **k)

    monkeypatch.setattr(training, "validation_loss", stop_at_second_validation)
    with pytest.raises(TrainingInterrupted):
        _train(files, out, params={**LORA, "lr": 3e-3})
    assert latest_checkpoint(files / "stale.partial") is not None
    monkeypatch.undo()
    info = _train(files, out)
    assert info["resumed_from"] == []
    assert (out / WEIGHTS_FILE).read_bytes() == reference[1]
    assert json.loads((out / INFO_FILE).read_text())["params"]["lr"] == LORA["lr"]


# ---------------------------------------------------------------------------- errors


def test_oom_gives_one_clear_message(files, monkeypatch):
    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(training, "train_step", boom)
    with pytest.raises(RewardModelError) as err:
        _train(files, files / "oom", params={**LORA, "batch_size": 32})
    message = str(err.value)
    assert "out of GPU memory while training lora on fx at step 1" in message
    assert "Lower `batch_size` (now 32)" in message and "micro_batch_size" in message
    assert err.value.__suppress_context__ and err.value.__cause__ is None


def test_params_presets_and_validation():
    lora = resolve_params("lora")
    assert (lora["batch_size"], lora["steps"], lora["lr"], lora["checkpoint_every"]) == (
        32,
        100,
        2e-4,
        25,
    )
    assert (lora["lora_r"], lora["lora_alpha"], lora["lora_dropout"]) == (64, 16, 0.1)
    pt = resolve_params("prompt_tuning")
    assert pt["lr"] == 0.0052 and pt["num_virtual_tokens"] == 10
    with pytest.raises(RewardModelError, match="unknown training params"):
        resolve_params("lora", {"stpes": 3})
    with pytest.raises(RewardModelError, match="unknown method"):
        resolve_params("full", {})
    with pytest.raises(RewardModelError, match="val_fraction"):
        resolve_params("lora", {"val_fraction": 1.0})
