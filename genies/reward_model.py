"""Trained reward models: a causal LM with a fresh scalar head (paper appendix C).

The reward of a text is ``head(h_last)``: a bias-free ``Linear(hidden, 1)`` in float32 on the
final hidden state (after the model's final norm) at the LAST REAL token. Texts are
``[BOS] prompt response EOS`` tokenised like the zero-shot scorer
(`genies.scoring.tokenize_examples`), so that token is the EOS. Batches are right-padded and
the read position is ``attention_mask.sum(1) - 1`` (plus the virtual tokens for prompt
tuning): it never depends on where ``pad_token_id`` occurs inside a text, unlike the published
code (genies-spec.md 4.4). Sequences longer than ``max_length`` keep their first token (BOS)
and their last ``max_length - 1`` tokens, so the response end (where the reward is read)
always survives.

Methods:

- ``lora``: peft LoRA adapters (rank, alpha, dropout, target modules from the params) on the
  frozen base; with ``quantization: nf4`` the base is 4-bit NF4 (bitsandbytes; CUDA or CPU)
  and prepared with peft's ``prepare_model_for_kbit_training`` (QLoRA, as published).
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

from . import interventions as registry
from .data import read_examples
from .errors import GeniesError
from .io import RunRecord, write_parquet
from .models import load_model, model_layout
from .predictions import expand_pairs, predictions_table
from .progress import ProgressLog
from .scoring import pair_probabilities, tokenize_examples

log = logging.getLogger(__name__)

METHODS = tuple(registry.of_family("tuned"))
PROMPT_INITS = ("vocab", "random")
WEIGHTS_FILE = "reward_model.safetensors"
INFO_FILE = "reward_model.json"


class RewardModelError(GeniesError):
    """Training or prediction of a reward model cannot go on (e.g. out of memory)."""


class RewardModel(torch.nn.Module):
    """``lm`` (a causal LM, LoRA-injected or frozen) + optional virtual tokens + scalar head."""

    def __init__(self, lm, head: torch.nn.Linear, prompt: torch.nn.Parameter | None = None):
        super().__init__()
        self.lm = lm
        self.head = head
        self.prompt = prompt
        # The decoder stack without the LM head: no [batch, length, vocab] logits are computed.
        self._decoder = getattr(lm, lm.base_model_prefix)

    @property
    def num_virtual_tokens(self) -> int:
        return 0 if self.prompt is None else self.prompt.shape[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards (float32, ``[batch]``) of right-padded sequences."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        if self.prompt is not None:
            n = input_ids.shape[0]
            virtual = self.prompt.to(embeds.dtype)[None].expand(n, -1, -1)
            embeds = torch.cat([virtual, embeds], dim=1)
            ones = attention_mask.new_ones(n, self.num_virtual_tokens)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        hidden = self._decoder(
            inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(h_last.float()).squeeze(-1)


def preference_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of ``-log sigmoid(r_chosen - r_rejected)`` (stable: softplus)."""
    return F.softplus(r_rejected - r_chosen).mean()


# --------------------------------------------------------------------------- build / save


def _enable_checkpointing(lm) -> None:
    # transformers 5.24 renamed gradient checkpointing to activation checkpointing (the old
    # name warns and will go in v6); both recompute activations in the backward pass.
    if hasattr(lm, "activation_checkpointing_enable"):
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_reward_model(model_dir, params: dict, seed: int, device="auto"):
    """Load the base of `model_dir` and wrap it per `params["method"]`; return (model, loaded).

    `params` are resolved training params (`genies.training.resolve_params`); the keys used
    here are method, dtype, quantization, lora_*, target_modules, num_virtual_tokens,
    prompt_init and gradient_checkpointing. Every fresh weight (LoRA A, virtual tokens, head)
    is drawn from RNGs seeded by `seed`, so a build is reproducible.
    """
    method = params["method"]
    if method not in METHODS:
        raise ValueError(f"unknown reward-model method {method!r}; allowed: {', '.join(METHODS)}")
    loaded = load_model(
        model_dir, device=device, dtype=params["dtype"], quantization=params["quantization"]
    )
    lm = loaded.model
    lm.requires_grad_(False)
    if loaded.quantization:
        from peft import prepare_model_for_kbit_training

        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
        _keep_4bit_differentiable(lm)
    if params["gradient_checkpointing"]:
        _enable_checkpointing(lm)
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
    model = RewardModel(lm, head.to(loaded.device), prompt)
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


def load_reward_model(adapter_dir, model_dir, device="auto"):
    """A trained reward model from `adapter_dir` (written by `train_reward_model`).

    Returns (model, loaded, info) with `info` the adapter's JSON record.
    """
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    info = json.loads((adapter_dir / INFO_FILE).read_text())
    # The seed only draws initial weights, which the saved tensors replace.
    model, loaded = build_reward_model(model_dir, info["params"], seed=0, device=device)
    load_trainable(model, load_file(adapter_dir / WEIGHTS_FILE))
    return model, loaded, info


# --------------------------------------------------------------------------- tokens / scoring


def encode_examples(tokenizer, prompts, responses, max_length: int | None):
    """Token ids of every ``prompt + response + EOS``: ``seqs[i][j]``, and how many were cut."""
    prompt_ids, response_ids = tokenize_examples(tokenizer, prompts, responses)
    seqs, cut = [], 0
    for p, rs in zip(prompt_ids, response_ids, strict=True):
        row = []
        for r in rs:
            s = p + r
            if max_length is not None and len(s) > max_length:
                s = s[:1] + s[len(s) - (max_length - 1) :]
                cut += 1
            row.append(s)
        seqs.append(row)
    return seqs, cut


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


def score_sequences(model, seqs, pad_id: int, batch_size: int, device, progress=None):
    """Reward of every sequence (float64, input order), in length-sorted batches, no grad.

    Longest first, so an out-of-memory error shows up on the first batch. `progress` is
    called as ``progress(done, total)`` after each batch.
    """
    order = np.argsort([-len(s) for s in seqs], kind="stable")
    out = np.empty(len(seqs), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                ids, mask = collate([seqs[i] for i in rows], pad_id, device)
                out[rows] = model(ids, mask).double().cpu().numpy()
                if progress is not None:
                    progress(min(start + batch_size, len(order)), len(order))
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
    except torch.OutOfMemoryError as exc:  # CUDA (and other accelerators)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        raise RewardModelError(f"out of GPU memory while {doing} ({first}). {advice}") from None
    except RuntimeError as exc:
        if "can't allocate memory" not in str(exc):  # the CPU allocator's message
            raise
        raise RewardModelError(f"out of CPU memory while {doing}. {advice}") from None


# --------------------------------------------------------------------------- prediction


def reward_predictions(
    model, tokenizer, examples: pa.Table, *, labels: dict, batch_size: int, max_length, device
) -> pa.Table:
    """Per-pair predictions of a reward model on a materialised split.

    Every response is scored once per example; pair i compares the preferred response with
    ``dispreferred[i]``: ``prob_preferred = sigmoid(r_pref - r_disp)``, correct when
    ``r_pref > r_disp``. `labels` gives model, intervention, train and eval_dataset.
    """
    cols = examples.select(["prompt", "responses"]).to_pydict()
    seqs, cut = encode_examples(tokenizer, cols["prompt"], cols["responses"], max_length)
    if cut:
        log.warning("%d sequences longer than max_length=%s were cut", cut, max_length)
    progress = ProgressLog(f"predict {labels['eval_dataset']}", "responses")
    with explain_oom(
        f"scoring {labels['eval_dataset']} in batches of {batch_size} sequences",
        f"Lower the prediction batch size (`eval_batch_size`, now {batch_size}).",
    ):
        rewards = example_rewards(model, seqs, pad_id_of(tokenizer), batch_size, device, progress)
    pairs = expand_pairs(examples)
    r_pref, r_disp = pair_rewards(rewards, pairs)
    return predictions_table(
        labels["model"],
        labels["intervention"],
        labels["train"],
        labels["eval_dataset"],
        pairs,
        pair_probabilities(r_pref, r_disp),
        r_pref > r_disp,
    )


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
) -> None:
    """Score the first `limit` examples of `data_file` with a trained reward model.

    Writes `genies.predictions` rows to `out_path` (Parquet with provenance). The batch size
    (sequences per forward) defaults to the adapter's `eval_batch_size`; dtype, quantization
    and `max_length` are the ones the adapter was trained with.
    """
    if threads:
        torch.set_num_threads(threads)
    labels = {
        "model": model_name,
        "intervention": intervention,
        "train": train,
        "eval_dataset": eval_dataset,
    }
    run = RunRecord(
        "predict", model=model_name, intervention=intervention, train=train, eval=eval_dataset
    )
    examples = read_examples(data_file, limit)
    model, loaded, info = load_reward_model(adapter_dir, model_dir, device=device)
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
    table = reward_predictions(
        model,
        loaded.tokenizer,
        examples,
        labels=labels,
        batch_size=batch_size,
        max_length=info["params"]["max_length"],
        device=loaded.device,
    )
    adapter = {k: info[k] for k in ("method", "dataset", "seed", "best_step", "params")}
    params = {"limit": limit, "batch_size": batch_size, "adapter": adapter}
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
