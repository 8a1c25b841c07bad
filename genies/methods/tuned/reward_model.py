"""Trained reward models: a causal LM with a fresh scalar head (paper appendix C).

The reward of a text is ``head(h_last)``: a bias-free ``Linear(hidden, 1)`` in float32 on the
final hidden state (after the model's final norm) at the LAST REAL token. Texts are
``[BOS] prompt response EOS`` tokenised like the zero-shot scorer
(`genies.models.tokens.tokenize_examples`), so that token is the EOS. Batches are right-padded and
the read position is ``attention_mask.sum(1) - 1`` (plus the virtual tokens for prompt
tuning): it never depends on where ``pad_token_id`` occurs inside a text, unlike the published
code (docs/fidelity.md). Sequences longer than ``max_length`` keep their first token (BOS)
and their last ``max_length - 1`` tokens, so the response end (where the reward is read)
always survives.

Methods:

- ``lora``: peft LoRA adapters (rank, alpha, dropout, target modules from the params) on the
  frozen base; with ``quantization: nf4`` the base is 4-bit NF4 (bitsandbytes; CUDA or CPU)
  and prepared with peft's ``prepare_model_for_kbit_training`` (QLoRA, as published); it
  runs under bf16 autocast when its compute dtype is bfloat16 (k-bit preparation upcast the
  other weights to float32). The LoRA dropout masks are keyed by row (`KeyedDropout`), so
  that a training step does not depend on how it is split into micro-batches.
- ``prompt_tuning``: ``num_virtual_tokens`` learned input embeddings prepended to every
  sequence. Initialised from the embeddings of seeded random vocabulary tokens
  (``prompt_init: vocab``; peft's SAMPLE_VOCAB) or N(0, 1) (``random``: peft's RANDOM, what
  the published code used).

Only the trainable tensors (adapters or virtual tokens, plus the head) are ever saved, as
safetensors keyed by parameter name (`trainable_tensors` / `load_trainable`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from genies.data.materialise import read_examples
from genies.data.predictions import expand_pairs, pair_rows
from genies.errors import GeniesError
from genies.io import write_parquet
from genies.models.context import DEFAULT_POLICY, cut_to_length, fit_examples, max_positions
from genies.models.loading import load_model, model_layout, model_run
from genies.models.memory import (
    Budget,
    RewardModelPlan,
    is_out_of_memory,
    out_of_memory_message,
    release_memory,
)
from genies.models.tokens import tokenize_examples
from genies.pipeline import interventions as registry
from genies.progress import ProgressLog
from genies.versions import check_versions

log = logging.getLogger(__name__)

METHODS = tuple(registry.of_family("tuned"))
PROMPT_INITS = ("vocab", "random")
WEIGHTS_FILE = "reward_model.safetensors"
INFO_FILE = "reward_model.json"


class RewardModelError(GeniesError):
    """Training or prediction of a reward model cannot go on (e.g. out of memory)."""


class RewardModel(torch.nn.Module):
    """``lm`` (a causal LM, LoRA-injected or frozen) + optional virtual tokens + scalar head.

    `autocast_dtype`: the decoder runs under autocast to it (a 4-bit base whose other weights
    k-bit preparation upcast to float32, computing in bfloat16). `row_keys` (training) key
    each row's LoRA dropout masks (`KeyedDropout`).
    """

    def __init__(
        self,
        lm,
        head: torch.nn.Linear,
        prompt: torch.nn.Parameter | None = None,
        autocast_dtype: torch.dtype | None = None,
        compute_dtype: torch.dtype = torch.float32,
        quantized: bool = False,
    ):
        super().__init__()
        self.lm = lm
        self.head = head
        self.prompt = prompt
        self.autocast_dtype = autocast_dtype
        # what the memory model (`genies.models.memory.TrainingSetup`) needs to know of the base
        self.compute_dtype, self.quantized = compute_dtype, quantized
        self.dropout_keys = RowKeys()
        # The decoder stack without the LM head: no [batch, length, vocab] logits are computed.
        self._decoder = getattr(lm, lm.base_model_prefix)

    @property
    def num_virtual_tokens(self) -> int:
        return 0 if self.prompt is None else self.prompt.shape[0]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        row_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rewards (float32, ``[batch]``) of right-padded sequences."""
        # kept after the call: gradient checkpointing recomputes the dropout in the backward
        self.dropout_keys.current = row_keys
        with torch.autocast(
            input_ids.device.type,
            dtype=self.autocast_dtype,
            enabled=self.autocast_dtype is not None,
        ):
            h_last = self._last_hidden(input_ids, attention_mask)
        return self.head(h_last.to(self.head.weight.device, torch.float32)).squeeze(-1)

    def _last_hidden(self, input_ids, attention_mask) -> torch.Tensor:
        embeds = self.lm.get_input_embeddings()(input_ids)
        if self.prompt is not None:
            n = input_ids.shape[0]
            virtual = self.prompt.to(embeds.device, embeds.dtype)[None].expand(n, -1, -1)
            embeds = torch.cat([virtual, embeds], dim=1)
            ones = attention_mask.new_ones(n, self.num_virtual_tokens)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        hidden = self._decoder(
            inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        # with a device map the last layer (and so `hidden`) may sit on another device
        last = (attention_mask.sum(dim=1) - 1).to(hidden.device)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class RowKeys:
    """The dropout keys of the rows of a reward model's latest forward (None: unkeyed)."""

    current: torch.Tensor | None = None


_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds), in place on int64 values < 2**32.

    The multipliers are below 2**31, so no product leaves int64.
    """
    for multiplier in (0x7FEB352D, 0x2C1B3C6D):
        x.bitwise_xor_(x >> 16).mul_(multiplier).bitwise_and_(_M32)
    return x.bitwise_xor_(x >> 15)


class _MaskedScale(torch.autograd.Function):
    """``x * keep * scale`` that saves only the boolean mask for the backward pass."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None, None


class KeyedDropout(torch.nn.Module):
    """Dropout whose mask is a hash of (row key, module, element) instead of an RNG stream.

    A row's mask depends neither on the other rows of the batch nor on its padded width, so
    a training step gives the same result however its pairs are split into micro-batches
    (and after an out-of-memory back-off), and the same on every device. Without row keys
    (a caller that passes none) it is ordinary dropout.
    """

    def __init__(self, p: float, module_key: int, keys: RowKeys):
        super().__init__()
        self.p, self.module_key, self.keys = p, module_key, keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = self.keys.current
        if not self.training or self.p == 0:
            return x
        if keys is None:
            return F.dropout(x, self.p, True)
        if keys.shape[0] != x.shape[0]:
            raise ValueError(f"{keys.shape[0]} dropout keys for a batch of {x.shape[0]} rows")
        rows = keys.to(x.device, torch.int64) * 0x9E37 + self.module_key * 0x85EB
        seeds = _mix32(rows.bitwise_and_(_M32))
        n = x[0].numel()
        x_hash = torch.arange(n, device=x.device, dtype=torch.int64).mul_(0x9E3779B1)
        x_hash = x_hash[None, :].add(seeds[:, None]).bitwise_and_(_M32)
        keep = _mix32(x_hash) >= int(self.p * 2**32)
        return _MaskedScale.apply(x, keep.view(x.shape), 1.0 / (1.0 - self.p))


def key_lora_dropout(lm, keys: RowKeys) -> int:
    """Replace every LoRA dropout of `lm` by a `KeyedDropout`; returns how many."""
    count = 0
    for module in lm.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                dropouts[name] = KeyedDropout(dropout.p, count, keys)
                count += 1
    return count


def preference_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of ``-log sigmoid(r_chosen - r_rejected)`` (stable: softplus)."""
    return F.softplus(r_rejected - r_chosen).mean()


# --------------------------------------------------------------------------- build / save


def enable_checkpointing(lm) -> None:
    """Gradient checkpointing of `lm`'s decoder layers (also after the adapters are in)."""
    # transformers 5.24 renamed gradient checkpointing to activation checkpointing (the old
    # name warns and will go in v6); both recompute activations in the backward pass.
    if hasattr(lm, "activation_checkpointing_enable"):
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_reward_model(model_dir, params: dict, seed: int, device="auto", **placement):
    """Load the base of `model_dir` and wrap it per `params["method"]`; return (model, loaded).

    `placement` (gpus, device_map, offload_folder) goes to `genies.models.loading.load_model`: the
    head and the virtual tokens sit on the input device and follow the tensors they meet.

    `params` are resolved training params (`genies.methods.tuned.training.resolve_params`); the keys
    used here are method, dtype, quantization, lora_*, target_modules, num_virtual_tokens,
    prompt_init and gradient_checkpointing (True: on; "auto": `genies.methods.tuned.training` turns
    it on when the memory plan needs it). Every fresh weight (LoRA A, virtual tokens, head) is drawn
    from RNGs seeded by `seed`, so a build is reproducible. LoRA dropout is keyed by row
    (`KeyedDropout`); a 4-bit base computing in bfloat16 runs under bf16 autocast.
    """
    method = params["method"]
    if method not in METHODS:
        raise ValueError(f"unknown reward-model method {method!r}; allowed: {', '.join(METHODS)}")
    check_versions(("peft",))
    loaded = load_model(
        model_dir,
        device=device,
        dtype=params["dtype"],
        quantization=params["quantization"],
        **placement,
    )
    lm = loaded.model
    lm.requires_grad_(False)
    if loaded.quantization:
        from peft import prepare_model_for_kbit_training

        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
        _keep_4bit_differentiable(lm)
    if params["gradient_checkpointing"] is True:  # "auto": the memory plan decides
        enable_checkpointing(lm)
    hidden = model_layout(lm)["hidden_size"]
    gen = torch.Generator().manual_seed(seed)
    prompt = None
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=params["lora_r"],
            lora_alpha=params["lora_alpha"],
            lora_dropout=params["lora_dropout"],
            target_modules=params["target_modules"],
            bias="none",
        )
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(seed)  # LoRA A is drawn from the global CPU RNG
            # peft 0.21 reads a property transformers 5 deprecated; nothing to act on.
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            get_peft_model(lm, config)  # injects the adapters into `lm` in place
    else:
        prompt = torch.nn.Parameter(_initial_prompt(lm, params, gen).to(loaded.device))
    head = torch.nn.Linear(hidden, 1, bias=False)
    std = float(getattr(lm.config, "initializer_range", 0.02))
    with torch.no_grad():
        head.weight.copy_(torch.randn(1, hidden, generator=gen) * std)
    # k-bit preparation upcast the unquantised weights to float32: compute as the base does
    bf16 = loaded.quantization and loaded.dtype == torch.bfloat16
    model = RewardModel(
        lm,
        head.to(loaded.device),
        prompt,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        compute_dtype=loaded.dtype,
        quantized=bool(loaded.quantization),
    )
    key_lora_dropout(lm, model.dropout_keys)
    return model.eval(), loaded


def _keep_4bit_differentiable(lm) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    bitsandbytes 0.50 on a CPU with AVX512-BF16: the first forward of a `Linear4bit` in eval
    mode without grad (our validation) permanently repacks its weight, and every later
    forward, training included, runs `gemv_4bit`, which has no autograd: gradients through
    the frozen layers vanish and only the head keeps learning, silently. One kernel for
    training, validation and prediction also keeps their rewards consistent.
    """
    for module in lm.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _initial_prompt(lm, params: dict, gen: torch.Generator) -> torch.Tensor:
    n = params["num_virtual_tokens"]
    table = lm.get_input_embeddings().weight
    if params["prompt_init"] == "vocab":
        ids = torch.randint(0, table.shape[0], (n,), generator=gen)
        return table.detach()[ids.to(table.device)].float().cpu().clone()
    if params["prompt_init"] == "random":
        return torch.randn(n, table.shape[1], generator=gen)
    raise ValueError(f"unknown prompt_init {params['prompt_init']!r}; allowed: {PROMPT_INITS}")


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (CPU, contiguous copies), ready for safetensors."""
    return {
        name: p.detach().to("cpu", copy=True).contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors into `model`; the names must match exactly."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        missing = sorted(set(params) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(params))[:3]
        raise ValueError(
            f"saved reward-model weights do not fit the model: missing {missing}, "
            f"unexpected {extra} (was it trained with other method/LoRA settings?)"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(p.device, p.dtype))


def load_reward_model(adapter_dir, model_dir, device="auto", **placement):
    """A trained reward model from `adapter_dir` (written by `train_reward_model`).

    Returns (model, loaded, info) with `info` the adapter's JSON record.
    """
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    info = json.loads((adapter_dir / INFO_FILE).read_text())
    # The seed only draws initial weights, which the saved tensors replace.
    model, loaded = build_reward_model(
        model_dir, info["params"], seed=0, device=device, **placement
    )
    load_trainable(model, load_file(adapter_dir / WEIGHTS_FILE))
    return model, loaded, info


# --------------------------------------------------------------------------- tokens / scoring


def encode_examples(
    tokenizer,
    prompts,
    responses,
    max_length: int | None,
    reserved_positions: int = 0,
    chat_template: bool | None = None,
):
    """Token ids of every ``prompt + response + EOS``: ``seqs[i][j]``, and how many were cut.

    A sequence longer than `max_length` or than the model's positions (the tokenizer's
    `model_max_length`, which `genies.models.loading.load_model` sets to the model's context) less
    `reserved_positions` (virtual tokens) keeps its first token and its last ones
    (`genies.models.context.cut_to_length`). `chat_template`: as in `tokenize_examples` (default:
    what the model's registry entry asks; the template's end of turn then replaces EOS).
    """
    limit = text_limit(tokenizer, max_length, reserved_positions)
    prompt_ids, response_ids = tokenize_examples(
        tokenizer, prompts, responses, chat_template=chat_template
    )
    seqs, cut = [], 0
    for p, rs in zip(prompt_ids, response_ids, strict=True):
        row = []
        for r in rs:
            s, removed = cut_to_length(p + r, limit)
            cut += removed > 0
            row.append(s)
        seqs.append(row)
    return seqs, cut


def text_limit(tokenizer, max_length: int | None, reserved_positions: int = 0) -> int | None:
    """Tokens a text may have: `max_length` and the model's positions less the reserved."""
    positions = max_positions(tokenizer=tokenizer)
    limits = [n for n in (max_length, positions and positions - reserved_positions) if n]
    return min(limits) if limits else None


def collate(seqs, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(input_ids, attention_mask)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def pad_id_of(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else int(tokenizer.eos_token_id)


def score_sequences(model, seqs, pad_id: int, batch_size, device, progress=None):
    """Reward of every sequence (float64, input order), in length-sorted batches, no grad.

    Longest first, so an out-of-memory error shows up on the first batch. `batch_size`:
    sequences per forward, or a `genies.models.memory.RewardModelPlan`, whose groups fit the memory
    budget and become smaller after an out-of-memory error (the failed group is scored
    again; a single sequence that does not fit raises). `progress` is called as
    ``progress(done, total)`` after each batch.
    """
    order = np.argsort([-len(s) for s in seqs], kind="stable")
    lengths = np.array([len(seqs[i]) for i in order], dtype=np.int64)
    plan = batch_size if isinstance(batch_size, RewardModelPlan) else None
    if plan is None:
        plan = RewardModelPlan.fixed_rows(batch_size)
    out = np.empty(len(seqs), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            pending = plan.row_groups(lengths)
            while pending:
                start, end = pending[0]
                rows = order[start:end]
                try:
                    ids, mask = collate([seqs[i] for i in rows], pad_id, device)
                    out[rows] = model(ids, mask).double().cpu().numpy()
                except Exception as exc:
                    if not is_out_of_memory(exc) or plan.back_off_rows(len(rows)) is None:
                        raise
                else:
                    pending.pop(0)
                    if progress is not None:
                        progress(end, len(order))
                    continue
                release_memory()  # out of memory: this group and the rest in smaller ones
                plan.note_backoff("no-grad forward", failed_rows=len(rows), done=start)
                pending = [(start + s, start + e) for s, e in plan.row_groups(lengths[start:])]
    finally:
        model.train(was_training)
    return out


def example_rewards(model, seqs_per_example, pad_id, batch_size, device, progress=None):
    """Rewards per example and response (each response scored once), as a list of arrays."""
    flat = [s for row in seqs_per_example for s in row]
    rewards = score_sequences(model, flat, pad_id, batch_size, device, progress)
    cuts = np.cumsum([len(row) for row in seqs_per_example])[:-1]
    return np.split(rewards, cuts)


def pair_rewards(rewards, pairs) -> tuple[np.ndarray, np.ndarray]:
    """(r_preferred, r_dispreferred) of every pair of `expand_pairs`, from `example_rewards`."""
    rows = pairs["example_row"]
    r_pref = [rewards[r][p] for r, p in zip(rows, pairs["preferred_response"], strict=True)]
    r_disp = [rewards[r][d] for r, d in zip(rows, pairs["dispreferred_response"], strict=True)]
    return np.array(r_pref, dtype=np.float64), np.array(r_disp, dtype=np.float64)


@contextlib.contextmanager
def explain_oom(doing: str, advice: str):
    """Turn an out-of-memory error into one clear `RewardModelError` (no traceback chain)."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError, or the CPU allocator's error
        if not is_out_of_memory(exc):
            raise
        raise RewardModelError(out_of_memory_message(exc, doing, advice)) from None


# --------------------------------------------------------------------------- prediction


def reward_predictions(
    model,
    tokenizer,
    examples: pa.Table,
    *,
    labels: dict,
    batch_size: int,
    max_length,
    device,
    context_policy: str = DEFAULT_POLICY,
    budget: Budget | None = None,
) -> pa.Table:
    """Per-pair predictions of a reward model on a materialised split.

    Every response is scored once per example; pair i compares the preferred response with
    ``dispreferred[i]``: ``prob_preferred = sigmoid(r_pref - r_disp)``, correct when ``r_pref >
    r_disp``. `labels` gives model, intervention, train and eval_dataset. Examples that do not fit
    the model get `context_policy` (`genies.models.context`), recorded on their rows; then texts
    longer than `max_length` are cut as in training. A limited memory `budget`
    (`genies.models.memory`) makes the batches of at most `batch_size` sequences fit it.
    """
    cols = examples.select(["prompt", "responses"]).to_pydict()
    prompt_ids, response_ids = tokenize_examples(tokenizer, cols["prompt"], cols["responses"])
    positions = max_positions(getattr(model, "lm", model), tokenizer)
    if positions is not None:
        positions -= getattr(model, "num_virtual_tokens", 0)
    fit = fit_examples(prompt_ids, response_ids, positions, context_policy, tokenizer.bos_token_id)
    if fit.n_cut or fit.n_skipped:
        log.warning("%s: examples beyond the context: %s", labels["eval_dataset"], fit.summary())
    kept = fit.kept()
    seqs, seq_cut = [], []
    for i, rs in enumerate(response_ids):
        cut = [cut_to_length(fit.prompt_ids[i] + r, max_length) for r in rs]
        seqs.append([s for s, _ in cut])
        seq_cut.append(np.array([n for _, n in cut], dtype=np.int64))
    n_cut = sum(int(np.count_nonzero(seq_cut[i])) for i in kept)
    if n_cut:
        log.warning("%d sequences longer than max_length=%s were cut", n_cut, max_length)
    progress = ProgressLog(f"predict {labels['eval_dataset']}", "responses")
    with explain_oom(
        f"scoring {labels['eval_dataset']} in batches of {batch_size} sequences",
        f"Lower the prediction batch size (`eval_batch_size`, now {batch_size}).",
    ):
        rows = batch_size
        if budget is not None:
            rows = RewardModelPlan.for_prediction(model, budget, batch_size)
        scored = example_rewards(
            model, [seqs[i] for i in kept], pad_id_of(tokenizer), rows, device, progress
        )
    rewards = [np.full(len(rs), np.nan) for rs in response_ids]  # NaN: skipped
    for i, r in zip(kept, scored if len(kept) else [], strict=True):
        rewards[i] = r
    pairs = expand_pairs(examples)
    r_pref, r_disp = pair_rewards(rewards, pairs)
    rows = pairs["example_row"]
    cut_pref, cut_disp = (c.astype(np.int64) for c in pair_rewards(seq_cut, pairs))
    names = (labels["model"], labels["intervention"], labels["train"], labels["eval_dataset"])
    cut = fit.prompt_tokens_cut[rows] + np.maximum(cut_pref, cut_disp)
    return pair_rows(*names, pairs, r_pref, r_disp, cut, fit.skipped[rows])


def adapter_summary(info: dict) -> dict:
    """What a prediction's provenance records of the reward model it used."""
    return {k: info[k] for k in ("method", "dataset", "seed", "best_step", "params")}


def predict_reward_model(
    *,
    model_dir,
    adapter_dir,
    data_file,
    out_path,
    model_name: str,
    intervention: str,
    train: str,
    eval_dataset: str,
    limit: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    context_policy: str = DEFAULT_POLICY,
    gpus: int = 1,
    memory: dict | None = None,
    attempt: int = 1,
) -> None:
    """Score the first `limit` examples of `data_file` with a trained reward model.

    Writes `genies.data.predictions` rows to `out_path` (Parquet with provenance). The batch size
    (sequences per forward) defaults to the adapter's `eval_batch_size`; dtype, quantization
    and `max_length` are the ones the adapter was trained with. `gpus` spreads the model over
    that many GPUs; `context_policy` treats examples beyond the model's context. `memory`
    (config section) and `attempt` set the memory budget (`genies.models.memory.Budget.resolve`).
    """
    if threads:
        torch.set_num_threads(threads)
    labels = {
        "model": model_name,
        "intervention": intervention,
        "train": train,
        "eval_dataset": eval_dataset,
    }
    run = model_run(
        "predict", model_name, model_dir, intervention=intervention, train=train, eval=eval_dataset
    )
    examples = read_examples(data_file, limit)
    model, loaded, info = load_reward_model(adapter_dir, model_dir, device=device, gpus=gpus)
    batch_size = batch_size or info["params"]["eval_batch_size"]
    log.info(
        "predict %s/%s/%s on %s: %d examples, device %s, dtype %s, best step %s",
        model_name,
        intervention,
        train,
        eval_dataset,
        examples.num_rows,
        loaded.device,
        loaded.dtype,
        info["best_step"],
    )
    budget = Budget.resolve(memory, loaded.device, attempt, model)
    table = reward_predictions(
        model,
        loaded.tokenizer,
        examples,
        labels=labels,
        batch_size=batch_size,
        max_length=info["params"]["max_length"],
        device=loaded.device,
        context_policy=context_policy,
        budget=budget,
    )
    params = {
        "limit": limit,
        "batch_size": batch_size,
        "adapter": adapter_summary(info),
        "context_policy": context_policy,
        "gpus": gpus,
        "memory": budget.record(),
    }
    write_parquet(
        table,
        out_path,
        run.finish(
            params=params,
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
            n_examples=examples.num_rows,
        ),
    )
