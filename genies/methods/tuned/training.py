"""Train a reward model (LoRA / QLoRA or prompt tuning) on one dataset, resumably.

Data. The examples are the first `max_train_examples` rows of the dataset's materialised
train split (None: all). A seeded `val_fraction` of them (at least one) is held out: every
evaluation pair of those examples (preferred vs each dispreferred response) is a validation
pair. Each remaining example gives ONE training pair: its preferred response against one
dispreferred response drawn by a seeded RNG (as upstream, which drew it unseeded). The test
split is never used.

Seeds (`genies.methods.tuned.training_data`). The hold-out, the pair choice, the pair order of each
epoch, the fresh weights and the dropout masks of each step are seeded from (config seed, dataset
name, purpose). The data order is a pure function of the step (step s uses pairs (s-1)*B .. s*B-1 of
the concatenated epoch orders) and torch's RNG is re-seeded before every step, so a resumed run
needs no saved RNG state: restoring the trainable tensors, the optimizer and the step reproduces the
uninterrupted run exactly (bit for bit on the same machine and thread count).

Determinism on CUDA (``deterministic: true``, the default; `training_kernels`). PyTorch's
deterministic algorithms are switched on (warning, not failing, where an op has no deterministic
implementation), cuBLAS gets a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, set before the first
CUDA call), and the whole training loop (forward, backward, validation) runs attention with the
math SDPA kernel: the flash and memory-efficient kernels' backward passes are not deterministic.
The math kernel materialises each layer's attention matrix ``[batch, heads, L, L]`` (float32 for
bf16 inputs), which the memory plan counts (`genies.models.memory.TrainingCosts`). On the CPU
nothing changes (its attention is deterministic, and the math kernel would change gradients by
rounding). ``deterministic: false`` keeps the faster kernels on CUDA, and a resumed run then
matches an uninterrupted one only up to float rounding.

Optimisation (as upstream): AdamW, constant learning rate, no weight decay, gradient norm
clipped to `max_grad_norm` (0.3). Each step draws `batch_size` pairs; chosen and rejected
texts go through the model as ONE batch (`micro_batch_size` pairs per forward, with gradient
accumulation, when set). Loss: mean of -log sigmoid(r_chosen - r_rejected).

Memory (`genies.models.memory`, config section `memory`). Under a limited budget (on a GPU: its free
memory after loading) a step's pairs are cut into length-bucketed micro-batches that fit (at most
`micro_batch_size` pairs each), gradient checkpointing turns on when the longest pair does not fit
without it (`gradient_checkpointing: auto`), and validation batches fit too; unlimited (the CPU
default), batches are as set. An out-of-memory error makes the micro-batches smaller and runs the
same step again (no restart); the plan and every back-off are recorded under "memory" in
reward_model.json. The step's result does not depend on the micro-batches: LoRA dropout masks are
keyed by (step seed, pair, chosen/rejected, element)
(`genies.methods.tuned.reward_model.KeyedDropout`), so it equals the one-batch step up to float
rounding.

Checkpoints and selection. Every `checkpoint_every` steps and at the last step the model is
evaluated on the validation pairs and a checkpoint is written (`genies.methods.tuned.checkpoints`)
into the work directory, by default `<out_dir>.partial/` next to the output (kept across job
restarts, removed after success). A rerun with the same inputs resumes from it; a SIGTERM (SLURM
preemption, `scancel`, Snakemake stopping) makes the job finish its current step, write a checkpoint
and stop with `TrainingInterrupted`; SIGKILL loses at most the steps since the last checkpoint. The
final adapter is the checkpoint with the LOWEST validation loss (earliest on ties), not the last
step as upstream (docs/fidelity.md).

Output directory: `reward_model.safetensors` (trainable tensors of the selected step) and
`reward_model.json` (params, seed, best step, validation and training-loss histories, data
sizes, timings, provenance); `genies.methods.tuned.reward_model.load_reward_model` reads them back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from genies.data.materialise import read_examples
from genies.data.predictions import expand_pairs
from genies.io import atomic_dir, link_or_copy, write_json
from genies.methods.tuned.checkpoints import (
    finish_work_dir,
    latest_checkpoint,
    load_checkpoint,
    prepare_work_dir,
    save_checkpoint,
)
from genies.methods.tuned.reward_model import (
    INFO_FILE,
    METHODS,
    WEIGHTS_FILE,
    RewardModelError,
    build_reward_model,
    collate,
    enable_checkpointing,
    encode_examples,
    example_rewards,
    explain_oom,
    load_trainable,
    pad_id_of,
    pair_rewards,
    preference_loss,
)
from genies.methods.tuned.training_data import PairOrder, choose_pairs, split_rows
from genies.models.loading import MODEL_INFO_FILE, model_run, resolve_device, resolve_model_dir
from genies.models.memory import (
    CHECKPOINTING_ON,
    Budget,
    RewardModelPlan,
    is_out_of_memory,
    release_memory,
)
from genies.pipeline import interventions as registry
from genies.progress import ProgressLog
from genies.seeds import derive_seed

log = logging.getLogger(__name__)

# The paper preset (appendix D.5/D.6, docs/fidelity.md): batch 32, 100 steps, lr 2e-4,
# LoRA r 64 / alpha 16 / dropout 0.1 on q_proj and v_proj (peft's Llama default: None),
# checkpoints every 25 steps, 4-bit base.
DEFAULT_PARAMS = {
    "steps": 100,
    "batch_size": 32,
    "micro_batch_size": None,  # pairs per forward (gradient accumulation); None: batch_size
    "lr": 2e-4,
    "max_grad_norm": 0.3,
    "lora_r": 64,
    "lora_alpha": 16,
    "lora_dropout": 0.1,
    "target_modules": None,  # None: peft's default for the architecture (Llama: q_proj, v_proj)
    "num_virtual_tokens": 10,
    "prompt_init": "vocab",  # "random": N(0, 1) as upstream
    "max_train_examples": None,
    "val_fraction": 0.1,
    "checkpoint_every": 25,
    "eval_batch_size": 32,  # sequences per forward in validation and prediction
    "max_length": None,  # tokens per text; None: no limit
    "dtype": "auto",
    "quantization": None,  # "nf4": QLoRA / 4-bit base
    "gradient_checkpointing": "auto",  # True, False, or "auto": when the memory plan needs it
    "device": "auto",
    "deterministic": True,  # CUDA: deterministic kernels, math attention (module docstring)
    "log_every_s": 10.0,
}
# What a checkpoint's state.json holds besides the optimizer's param groups.
FRESH_STATE = {
    "step": 0,
    "data_position": 0,  # pairs consumed: step * batch_size
    "train_loss": [],  # per step
    "validation": [],  # {"step", "loss", "accuracy"} per validation
    "best_step": None,
    "seconds": 0.0,  # training time over all resumed segments
    "validation_seconds": 0.0,
    "resumed_from": [],  # the step each rerun resumed from
}
# Keys that change nothing in the trained weights (left out of the resume fingerprint).
_COSMETIC = ("log_every_s",)


class TrainingInterrupted(RewardModelError):
    """SIGTERM arrived; a checkpoint was written and a rerun resumes from it."""


def resolve_params(method: str, params: dict | None = None) -> dict:
    """DEFAULT_PARAMS, then the method's defaults, then `params`; unknown keys are errors."""
    if method not in METHODS:
        raise RewardModelError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULT_PARAMS) - {"method"})
    if unknown:
        raise RewardModelError(
            f"unknown training params {unknown}; allowed: {', '.join(sorted(DEFAULT_PARAMS))}"
        )
    resolved = {**DEFAULT_PARAMS, **registry.get(method).defaults, **params, "method": method}
    for key in ("steps", "batch_size", "checkpoint_every", "eval_batch_size", "micro_batch_size"):
        value = resolved[key]
        if not (isinstance(value, int) and value >= 1) and not (
            key == "micro_batch_size" and value is None
        ):
            raise RewardModelError(f"training param {key} must be an integer >= 1")
    if not 0 < resolved["val_fraction"] < 1:
        raise RewardModelError("training param val_fraction must be between 0 and 1")
    if resolved["max_length"] is not None and resolved["max_length"] < 2:
        raise RewardModelError("training param max_length must be >= 2 (or null)")
    if resolved["gradient_checkpointing"] not in (True, False, "auto"):
        raise RewardModelError("training param gradient_checkpointing must be true, false or auto")
    if not isinstance(resolved["deterministic"], bool):
        raise RewardModelError("training param deterministic must be true or false")
    return resolved


def math_attention(params: dict, device) -> bool:
    """Whether training runs attention with the math SDPA kernel: deterministic, on CUDA."""
    return bool(params["deterministic"]) and torch.device(device).type == "cuda"


def prepare_determinism(params: dict, device) -> None:
    """Before the model is loaded: deterministic algorithms and cuBLAS's fixed workspace for
    deterministic training on CUDA (nothing on the CPU)."""
    if not math_attention(params, device):
        return
    if torch.cuda.is_initialized() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        log.warning(
            "CUDA was initialised before CUBLAS_WORKSPACE_CONFIG was set: cuBLAS calls made "
            "with an existing handle may not be deterministic"
        )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def training_kernels(params: dict, device) -> contextlib.AbstractContextManager:
    """The context a training loop (forward, backward, validation) runs in: the math SDPA
    kernel for deterministic training on CUDA, else nothing. A checkpointed layer recomputes
    its forward in the backward pass, so the backward must run inside it too."""
    if not math_attention(params, device):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def train_step(
    model, optimizer, pairs, micro, pad_id: int, device, max_grad_norm, where: str = "a step"
):
    """One optimizer step on `pairs` [(chosen ids, rejected ids)]; returns (loss, tokens).

    `micro`: pairs per micro-batch, or a `genies.models.memory.RewardModelPlan` whose micro-batches
    fit the memory budget. Under a plan an out-of-memory error makes the micro-batches
    smaller (then turns on gradient checkpointing) and runs the step again: the dropout keys
    are drawn once per step, so the retried step computes the same update.
    """
    plan = micro if isinstance(micro, RewardModelPlan) else RewardModelPlan.fixed_pairs(micro)
    # LoRA dropout keys of each pair's chosen and rejected text (seeded with the step)
    keys = torch.randint(0, 2**31 - 1, (len(pairs), 2))
    widths = [max(len(c), len(r)) for c, r in pairs]
    while True:
        size = 0
        try:
            optimizer.zero_grad(set_to_none=True)
            total, tokens = 0.0, 0
            for group in plan.pair_groups(widths):
                size = m = len(group)
                chunk = [pairs[i] for i in group]
                # Chosen and rejected in ONE forward pass: rows [0, m) chosen, [m, 2m) rejected
                ids, mask = collate([c for c, _ in chunk] + [r for _, r in chunk], pad_id, device)
                rewards = model(ids, mask, row_keys=torch.cat([keys[group, 0], keys[group, 1]]))
                loss = preference_loss(rewards[:m], rewards[m:]) * (m / len(pairs))
                loss.backward()
                total += loss.item()
                tokens += int(mask.sum())
            break
        except RuntimeError as exc:
            if not is_out_of_memory(exc) or (action := plan.back_off_training(size)) is None:
                raise
        optimizer.zero_grad(set_to_none=True)
        release_memory()  # out of memory: the same step again, in smaller micro-batches
        if action == CHECKPOINTING_ON:
            enable_checkpointing(model.lm)
        plan.note_backoff(f"training {where}", failed_pairs=size, action=action)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], max_grad_norm
        )
    optimizer.step()
    return total, tokens


def memory_plan(model, params: dict, budget: Budget, pairs) -> RewardModelPlan:
    """The micro-batches and no-grad groups of training `model` on `pairs` under `budget`;
    turns on gradient checkpointing when the plan needs it, and notes the plan."""
    widths = sorted((max(len(c), len(r)) for c, r in pairs), reverse=True)
    plan = RewardModelPlan.of(
        model,
        budget,
        params,
        longest_pair=widths[0] if widths else 0,
        math_attention=math_attention(params, budget.device),
    )
    if plan.checkpointing:
        enable_checkpointing(model.lm)
    # the planned peak of the step that draws the longest pairs
    budget.note(
        "training", **plan.record(), planned_step_bytes=plan.planned_step_bytes(
            widths[: params["batch_size"]]
        )
    )  # fmt: skip
    return plan


def validation_loss(model, seqs, pairs, pad_id, batch_size, device) -> tuple[float, float]:
    """(mean -log sigmoid(r_pref - r_disp), accuracy) over the validation pairs.

    `batch_size`: sequences per forward, or the run's `genies.models.memory.RewardModelPlan`."""
    rewards = example_rewards(model, seqs, pad_id, batch_size, device)
    r_pref, r_disp = pair_rewards(rewards, pairs)
    return float(np.mean(np.logaddexp(0.0, r_disp - r_pref))), float(np.mean(r_pref > r_disp))


def best_step(history: list[dict]) -> int | None:
    """The step of the lowest validation loss (earliest on ties; NaN never wins)."""
    best = None
    for entry in history:
        loss = entry["loss"] if math.isfinite(entry["loss"]) else math.inf
        if best is None or loss < best[0]:
            best = (loss, entry["step"])
    return None if best is None else best[1]


def default_work_dir(out_dir) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".partial")


def train_reward_model(**kwargs) -> dict:
    """Train a reward model and write the selected adapter (`fit_reward_model`); returns the
    JSON record written to `out_dir/reward_model.json`."""
    return fit_reward_model(**kwargs).info


@dataclass
class TrainedRewardModel:
    info: dict  # the record written to reward_model.json
    model: torch.nn.Module  # the loaded model with the selected (best) weights, in eval mode
    loaded: object  # genies.models.loading.LoadedModel of the base


def fit_reward_model(
    *,
    model_dir,
    train_file,
    out_dir,
    method: str,
    params: dict | None = None,
    seed: int = 0,
    dataset: str | None = None,
    work_dir=None,
    threads: int | None = None,
    model_name: str | None = None,
    memory: dict | None = None,
    attempt: int = 1,
    gpus: int = 1,
) -> TrainedRewardModel:
    """Train a reward model on `train_file` and write the selected adapter to `out_dir`.

    `dataset` defaults to the dataset part of the example ids; `work_dir` (checkpoints) to
    `<out_dir>.partial`; `model_name` only labels the provenance. Returns the record written
    to `out_dir/reward_model.json` and the model holding the selected weights, so the same
    job can predict with it. The work directory keeps the finished run's selected weights:
    a rerun with the same fingerprint (params, seed, data, base model) trains nothing.
    `memory` (config section) and `attempt` (the job's retry number) set the memory budget
    (`genies.models.memory.Budget.resolve`).
    """
    if threads:
        torch.set_num_threads(threads)
    params = resolve_params(method, params)
    run = model_run("tune", model_name, model_dir, method=method, seed=seed)
    examples = read_examples(train_file, params["max_train_examples"])
    dataset = dataset or examples.column("example_id")[0].as_py().split("/")[0]
    work_dir = Path(work_dir) if work_dir else default_work_dir(out_dir)
    prepare_determinism(params, resolve_device(params["device"]))  # before CUDA is used

    t_load = time.time()
    init_seed = derive_seed(seed, dataset, "init")
    on_gpu = resolve_device(params["device"]).type == "cuda"  # `gpus`: the model's GPUs
    model, loaded = build_reward_model(
        model_dir, params, init_seed, params["device"], gpus=gpus if on_gpu else 1
    )
    data = _TrainingData(examples, loaded.tokenizer, params, seed, dataset)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params["lr"], weight_decay=0.0)
    load_seconds = time.time() - t_load
    log.info(
        "tune %s on %s: %d training pairs, %d validation pairs (%d examples), %d trainable "
        "parameters, device %s, dtype %s%s; %d texts cut to max_length",
        method, dataset, len(data.pairs), data.n_val_pairs, len(data.val_seqs),
        sum(p.numel() for p in trainable), loaded.device, loaded.dtype,
        f", {loaded.quantization}" if loaded.quantization else "", data.cut,
    )  # fmt: skip

    prepare_work_dir(work_dir, _fingerprint(params, seed, dataset, examples, model_dir))
    state = dict(FRESH_STATE, train_loss=[], validation=[], resumed_from=[])
    checkpoint = latest_checkpoint(work_dir)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer)
        if state.get("finished"):
            log.info("training inputs unchanged since %s finished: reusing its weights", work_dir)
        else:
            state["resumed_from"].append(state["step"])
            log.info("resuming from %s (step %d of %d)", checkpoint, state["step"], params["steps"])

    model.train()
    micro = params["micro_batch_size"] or params["batch_size"]
    budget = Budget.resolve(memory, loaded.device, attempt, model)
    plan = memory_plan(model, params, budget, data.pairs)
    order = PairOrder(len(data.pairs), params["batch_size"], seed, dataset)
    progress = ProgressLog(
        "train", "steps", params["log_every_s"], state["step"], counts=("pairs", "tokens")
    )
    oom_advice = (
        f"Lower `batch_size` (now {params['batch_size']}) in the training params, or set "
        f"`micro_batch_size` (now {micro} pairs per forward) lower to keep the effective "
        f"batch through gradient accumulation, or lower `max_length` (now {params['max_length']})."
    )
    pad_id, device = pad_id_of(loaded.tokenizer), loaded.device
    with _StopRequest() as stop, training_kernels(params, device):
        for step in range(state["step"] + 1, params["steps"] + 1):
            t0 = time.time()
            torch.manual_seed(derive_seed(seed, dataset, "step", step))  # dropout masks
            batch = [data.pairs[i] for i in order.batch(step)]
            with explain_oom(f"training {method} on {dataset} at step {step}", oom_advice):
                loss, tokens = train_step(
                    model, optimizer, batch, plan, pad_id, device, params["max_grad_norm"],
                    where=f"step {step}",
                )  # fmt: skip
            state["seconds"] += time.time() - t0
            state.update(step=step, data_position=step * params["batch_size"])
            state["train_loss"].append(loss)
            progress(step, params["steps"], loss=loss, pairs=len(batch), tokens=tokens)
            if step % params["checkpoint_every"] == 0 or step == params["steps"]:
                t0 = time.time()
                with explain_oom(f"validating {method} on {dataset}", oom_advice):
                    v_loss, v_acc = validation_loss(
                        model, data.val_seqs, data.val_pairs, pad_id, plan, device
                    )
                state["validation_seconds"] += time.time() - t0
                state["validation"].append({"step": step, "loss": v_loss, "accuracy": v_acc})
                won = best_step(state["validation"]) == step
                state["best_step"] = step if won else state["best_step"]
                save_checkpoint(work_dir, model, optimizer, state, is_best=won)
                log.info(
                    "step %d: validation loss %.4f, accuracy %.3f%s; checkpoint written",
                    step, v_loss, v_acc, " (best so far)" if won else "",
                )  # fmt: skip
            elif stop.signal is not None:
                save_checkpoint(work_dir, model, optimizer, state, is_best=False)
            if stop.signal is not None:
                raise TrainingInterrupted(
                    f"stopped by signal {stop.signal} after step {step}; checkpoint in "
                    f"{work_dir}; rerun the job to resume"
                )

    info = {
        "method": method,
        "dataset": dataset,
        "seed": seed,
        "params": params,
        "model_dir": str(model_dir),
        "best_step": state["best_step"],
        "validation": state["validation"],
        "train_loss": state["train_loss"],
        "n_examples": examples.num_rows,
        "n_train_pairs": len(data.pairs),
        "n_validation_examples": len(data.val_seqs),
        "n_validation_pairs": data.n_val_pairs,
        "texts_cut": data.cut,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "memory": {**budget.record(), "plan": plan.record()},
        "resumed_from": state["resumed_from"],
        "reused_finished_training": bool(state.get("finished")),
        "timings": {
            "load_seconds": round(load_seconds, 3),
            "train_seconds": round(state["seconds"], 3),
            "validation_seconds": round(state["validation_seconds"], 3),
        },
    }
    info["provenance"] = run.finish(
        dataset=dataset, device=str(device), dtype=str(loaded.dtype).removeprefix("torch.")
    )
    best = finish_work_dir(work_dir)
    with atomic_dir(out_dir) as tmp:
        link_or_copy(best, tmp / WEIGHTS_FILE)
        write_json(info, tmp / INFO_FILE)
    load_trainable(model, load_file(best))
    log.info("tune done: best step %s of %d, in %s", info["best_step"], params["steps"], out_dir)
    return TrainedRewardModel(info, model.eval(), loaded)


class _TrainingData:
    """Token ids of the training pairs and of the validation examples of one run."""

    def __init__(self, examples, tokenizer, params: dict, seed: int, dataset: str):
        train_rows, val_rows = split_rows(examples.num_rows, params["val_fraction"], seed, dataset)
        cols = examples.select(["prompt", "responses"]).to_pydict()
        virtual = params["num_virtual_tokens"] if params["method"] == "prompt_tuning" else 0
        seqs, self.cut = encode_examples(
            tokenizer, cols["prompt"], cols["responses"], params["max_length"], virtual
        )
        chosen = choose_pairs(examples, train_rows, seed, dataset)
        self.pairs = [(seqs[r][p], seqs[r][d]) for r, p, d in chosen]
        self.val_seqs = [seqs[r] for r in val_rows]
        self.val_pairs = expand_pairs(examples.take(val_rows))
        self.n_val_pairs = len(self.val_pairs["example_id"])


def _fingerprint(params: dict, seed: int, dataset: str, examples, model_dir) -> dict:
    """What a checkpoint must match to be resumed: params, seed, data, base model files."""
    data = hashlib.sha256()
    for eid, fp in zip(
        examples.column("example_id").to_pylist(),
        examples.column("fingerprint").to_pylist(),
        strict=True,
    ):
        data.update(f"{eid}\t{fp}\n".encode())
    weights = resolve_model_dir(model_dir)
    files = sorted(
        (p.name, p.stat().st_size) for p in weights.iterdir() if p.suffix == ".safetensors"
    )
    described = Path(model_dir) / MODEL_INFO_FILE  # the registry spec (source, path, seed)
    spec = json.loads(described.read_text()).get("spec") if described.is_file() else None
    return {
        "format": 1,
        "params": {k: v for k, v in params.items() if k not in _COSMETIC},
        "seed": seed,
        "dataset": dataset,
        "data": data.hexdigest(),
        "model_config": hashlib.sha256((weights / "config.json").read_bytes()).hexdigest(),
        "model_files": files,
        "model_spec": spec,
    }


class _StopRequest:
    """Records a SIGTERM instead of dying, so the loop can checkpoint and stop cleanly."""

    def __enter__(self):
        self.signal = None
        self._previous = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: periodic checkpoints still protect the run
            pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False
