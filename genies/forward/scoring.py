"""Zero-shot reward model: summed log-probability of each response given its prompt.

An *example* is one prompt with ``k`` responses (``k`` is usually constant within a
dataset; this module also accepts a different ``k`` per example). For every response we
compute ``sum_j log p(r_j | prompt, r_<j)`` and the response's token count. This is the
hot path of the GPU scoring job, so :func:`score_tokenized` is built for speed while
staying exact; :func:`score_naive` is the plain per-pair loop used as the oracle in
tests and as the baseline in benchmarks.

Tokens come from `genies.models.tokens.tokenize_examples` (prompts and responses tokenised
separately; BOS, EOS and the chat template added there).

Prefix reuse (:func:`score_tokenized`)
    Each prompt is run through the model once; its ``k`` responses continue from the
    prompt's KV cache. The tokens that all responses of an example start with (their
    longest common prefix, leaving each response at least one token) are fed once too,
    with the prompt: in GENIES ~11% of all tokens (math and code responses often share
    their first lines). Their log-probabilities are computed once and added to the score
    of every response of the example. Below, "prompt" means the prompt plus that prefix.

    * Batching. Examples are sorted by prompt length (longest first, so an
      out-of-memory error shows up on the first batch) and cut into batches of ``B``
      examples with ``B * Lp <= batch_tokens`` (at least one example per batch), choosing
      the cut that minimises padded positions plus a per-call overhead (``_plan_groups``).
      Results are written back to the caller's order in one place
      (``_restore_order``), as in lm-eval-harness's ``Collator``.
    * Pass 1 (once per batch): left-padded prompts ``[B, Lp]`` with an attention mask
      and explicit ``position_ids = clamp(cumsum(mask) - 1, 0)``, ``use_cache=True``.
      Only the logits of the last ``c + 1`` positions are computed (``logits_to_keep``,
      ``c`` the longest shared response prefix of the batch); the last predicts the
      first remaining token of every response of the example, the others the shared
      prefix.
    * Pass 2: response token ``j >= 1`` is predicted by the logits at response position
      ``j - 1``. The last token of a response predicts nothing we need, so a response
      ``r`` is fed as ``r[:-1]`` (one-token responses need no pass 2 at all). The
      batch's response rows (all ``k`` responses of all ``B`` examples) are sorted by
      length and split into forward calls of at most ``batch_tokens`` padded positions
      each, choosing the split that minimises padded positions plus a per-call overhead
      (``_CALL_OVERHEAD_TOKENS``; dynamic programming in ``_plan_groups``). Grouping rows
      across examples by length removes most of the padding a per-example
      ``[B * k, max Lr]`` call would pay when a batch's responses differ in length
      (simulated on log-normal lengths: ~1.05-1.2x the unpadded positions instead of
      ~1.5-2x). Each call gets its own view of the prompt cache holding the rows it
      needs (``Cache.batch_select_indices`` on a shallow copy, the generalisation of
      ``batch_repeat_interleave(k)``: the prompt cache itself is never modified, so it
      serves every group). Responses are right-padded ``[R, Lr]``; the attention mask is
      ``concat(prompt mask of the row's example, response mask)`` (length
      ``Lp + Lr``) and ``position_ids = prompt_len + arange(Lr)``. No
      ``cache_position`` is passed: transformers 5 models (Llama, GPT-NeoX, ...) derive
      everything from ``position_ids``, the 2-D mask and the cache length.
    * Logits on padding are not computed: for a model whose ``forward`` takes
      ``logits_to_keep`` (a transformers causal LM), a forward pre-hook on its output
      embeddings (``_keep_rows``) hands the LM head only the hidden states of the kept
      positions, selected with a mask moved to the device those hidden states are on (with
      a device map, the last one; accelerate would move a mask passed as an argument to the
      first). No boolean ``logits_to_keep`` is passed. Other models compute full logits,
      which are indexed.
    * Log-probabilities: logits are cast to float32 in row chunks (at most
      ``_LOGIT_CHUNK_ELEMENTS`` float32 values at a time: small on a CPU, where the chunk
      must stay in cache) and the target's log-softmax is taken with one fused
      ``cross_entropy``, so no full ``[R, Lr, vocab]`` float32 log-softmax is ever
      materialised. Per-response sums are accumulated in float64.
    * Everything runs under ``torch.inference_mode()``; a model in training mode is put
      in eval mode for the call and restored afterwards. Inputs go to ``device`` (default
      ``model.device``); any model dtype works (logits are upcast to float32).

    Memory: the prompt cache holds at most ``batch_tokens`` positions; a response call
    adds a copy of the prompt-cache rows it needs (at most ``k * batch_tokens``
    positions), at most ``batch_tokens`` new positions and at most ``batch_tokens`` rows
    of logits in the model's dtype. Under a limited memory budget (``genies.models.memory``)
    ``batch_tokens`` is lowered until all of that fits; the planned bytes of every call
    are counted (``ScoreResult.plan``), and an out-of-memory error halves
    ``batch_tokens`` and scores the failed batch again.

    Assumes a standard causal decoder whose attention takes a padding mask (Llama,
    Mistral, Qwen, GPT-NeoX/Pythia, ...); recurrent/state-space models, which cannot
    left-pad, are not supported. For sliding-window models, scores are exact only while
    sequences fit in the window (a warning is issued otherwise).

Counters (:class:`ScoreResult`)
    ``tokens_unique`` is the data size, ``sum(len(prompt) + sum(len(response)))``.
    ``tokens_processed`` is the number of positions actually fed to the model, padding
    included. ``tokens_needed`` is what a padding-free prefix-sharing scorer must feed,
    ``sum(len(prompt) + c + sum(max(len(response) - c - 1, 0)))`` with ``c`` the shared
    response prefix of the example; ``tokens_processed /
    tokens_needed`` (:attr:`ScoreResult.padding_overhead`) is 1 exactly when no padding
    was fed. Because each prompt is fed once and the last response token is not fed,
    ``tokens_processed`` may be *below* ``tokens_unique``.

Probabilities
    :func:`pair_probabilities` turns two scores into the Bradley-Terry probability that
    the preferred response wins, ``sigmoid(s_pref - s_disp)``, computed stably; the
    scores (``sum`` or ``mean``) are chosen by `genies.forward.zero_shot.normalise`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from genies.data.predictions import pair_probabilities
from genies.models.context import max_positions
from genies.models.memory import (
    Budget,
    MemoryPlanError,
    ScoringCosts,
    Shape,
    dtype_bytes,
    is_out_of_memory,
    out_of_memory_message,
    plan_groups,
    release_memory,
    token_rows,
)

__all__ = [
    "ScoreResult",
    "pair_probabilities",
    "score_naive",
    "score_tokenized",
]

# At most this many float32 logits are materialised at once when computing log-probs. On a
# CPU the chunk must stay in cache: at 4 MiB (about 20 rows of a 49k vocabulary) the
# log-softmax is ~8x faster than at 128 MiB, and was a quarter of the scoring time before.
_LOGIT_CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 25}  # float32 values
# Cost of one extra forward call, in padded positions, when cutting batches and grouping
# response rows. Measured on SmolLM2 on 2 CPU cores (bench/bench_zero_shot.py), a call costs
# about as much as a few dozen positions; 32 keeps padding under ~10% on every GENIES dataset.
# On a GPU a small call is bound by reading the weights and costs more: raise it there.
_CALL_OVERHEAD_TOKENS = 32
# Padded positions per call when neither `batch_tokens` nor a memory budget sets them.
DEFAULT_BATCH_TOKENS = 4096

ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ScoreResult:
    """Scores of every response, flattened example-major (CSR layout).

    Responses of example ``i`` occupy ``offsets[i]:offsets[i + 1]`` in the flat arrays,
    in their original order; examples are in the caller's original order.

    Attributes:
        logprob_sum: float64 ``[n_responses]``, summed log-probability of each response.
        n_tokens: int64 ``[n_responses]``, number of tokens of each response.
        example_index: int64 ``[n_responses]``, the example each response belongs to.
        response_index: int64 ``[n_responses]``, position of the response in its example.
        offsets: int64 ``[n_examples + 1]``.
        tokens_processed: positions fed to the model, padding included.
        tokens_unique: ``sum(len(prompt) + sum(len(response)))`` over examples.
        tokens_needed: positions a padding-free prefix-sharing scorer must feed.
        n_forward: number of model forward calls.
        plan: the memory plan (``batch_tokens`` chosen, planned peak bytes of the calls,
            out-of-memory back-offs), for the job's provenance.
    """

    logprob_sum: np.ndarray
    n_tokens: np.ndarray
    example_index: np.ndarray
    response_index: np.ndarray
    offsets: np.ndarray
    tokens_processed: int
    tokens_unique: int
    tokens_needed: int
    n_forward: int
    plan: dict = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return len(self.offsets) - 1

    @property
    def padding_overhead(self) -> float:
        """``tokens_processed / tokens_needed`` (1.0 means no padding was fed)."""
        return self.tokens_processed / self.tokens_needed if self.tokens_needed else 1.0

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(logprob_sum, n_tokens)`` of the responses of example ``i``."""
        s, e = self.offsets[i], self.offsets[i + 1]
        return self.logprob_sum[s:e], self.n_tokens[s:e]

    def per_example(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Ragged view: one ``logprob_sum`` and one ``n_tokens`` array per example."""
        cuts = self.offsets[1:-1]
        return list(np.split(self.logprob_sum, cuts)), list(np.split(self.n_tokens, cuts))

    def as_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """``(logprob_sum, n_tokens)`` as ``[n_examples, k]`` arrays (``k`` must be constant)."""
        counts = np.diff(self.offsets)
        if len(counts) and np.any(counts != counts[0]):
            raise ValueError("examples have different numbers of responses; use per_example()")
        k = int(counts[0]) if len(counts) else 0
        n = self.n_examples
        return self.logprob_sum.reshape(n, k), self.n_tokens.reshape(n, k)


# --------------------------------------------------------------------------- helpers


def _validate(prompt_ids, response_ids) -> tuple[list[int], list[list[int]]]:
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} response lists")
    plens = [len(p) for p in prompt_ids]
    rlens = [[len(r) for r in rs] for rs in response_ids]
    for i, (pl, rl) in enumerate(zip(plens, rlens, strict=True)):
        if pl == 0 and rl:
            raise ValueError(
                f"example {i}: empty prompt; it needs >= 1 token (e.g. BOS) to predict "
                "the first response token"
            )
    return plens, rlens


def _empty_result(rlens: list[list[int]], tokens_unique: int, tokens_needed: int) -> dict:
    counts = np.array([len(r) for r in rlens], dtype=np.int64)
    offsets = np.zeros(len(rlens) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])
    return dict(
        logprob_sum=np.zeros(total, dtype=np.float64),
        n_tokens=np.fromiter((n for rl in rlens for n in rl), dtype=np.int64, count=total),
        example_index=np.repeat(np.arange(len(rlens), dtype=np.int64), counts),
        response_index=np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], counts),
        offsets=offsets,
        tokens_unique=tokens_unique,
        tokens_needed=tokens_needed,
    )


def _counts(plens: list[int], rlens: list[list[int]]) -> tuple[int, int]:
    unique = sum(plens) + sum(sum(rl) for rl in rlens)
    needed = sum(pl for pl, rl in zip(plens, rlens, strict=True) if rl) + sum(
        max(n - 1, 0) for rl in rlens for n in rl
    )
    return unique, needed


def _shared_prefix(responses: Sequence[Sequence[int]], keep: int = 1) -> int:
    """Length of the common start of all responses, leaving each at least `keep` tokens."""
    if len(responses) < 2:
        return 0
    limit = min(len(r) for r in responses) - keep
    first = responses[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in responses[1:]):
        n += 1
    return n


def _resolve_device(model, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    dev = getattr(model, "device", None)
    if dev is None:
        dev = next(model.parameters()).device
    return torch.device(dev)


def _accepts_logits_to_keep(model) -> bool:
    m = model
    for _ in range(4):  # follow wrappers such as PEFT's get_base_model()
        try:
            params = inspect.signature(m.forward).parameters
        except (TypeError, ValueError):
            return False
        if "logits_to_keep" in params:
            return True
        get_base = getattr(m, "get_base_model", None)
        if get_base is None:
            return False
        m = get_base()
    return False


class _EvalMode:
    """Put a model in eval mode for the duration of a call, then restore its mode."""

    def __init__(self, model):
        self.model = model
        self.was_training = bool(getattr(model, "training", False))

    def __enter__(self):
        if self.was_training:
            self.model.eval()

    def __exit__(self, *exc):
        if self.was_training:
            self.model.train()


def _target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits.float())[i, targets[i]]`` for ``logits [N, V]``, chunked."""
    n, vocab = logits.shape
    out = torch.empty(n, dtype=torch.float32, device=logits.device)
    budget = _LOGIT_CHUNK_ELEMENTS.get(logits.device.type, _LOGIT_CHUNK_ELEMENTS["cuda"])
    rows = max(1, budget // max(vocab, 1))
    for s in range(0, n, rows):
        # cross_entropy is one fused log-softmax + gather (logsumexp makes four passes)
        chunk = logits[s : s + rows].float()
        out[s : s + rows] = -F.cross_entropy(chunk, targets[s : s + rows], reduction="none")
    return out


def _plan_batches(
    plens: list[int], rlens: list[list[int]], batch_tokens: int, only=None
) -> list[list[int]]:
    """Sort examples longest prompt first and cut them into prompt-pass batches.

    The cut minimises padded prompt positions plus a per-call overhead (``_plan_groups``),
    with ``B * max(Lp) <= batch_tokens`` per batch (at least one example). Examples without
    responses are left out: there is nothing to score. `only`: plan just these examples.
    """
    idx = [i for i in (range(len(plens)) if only is None else only) if rlens[i]]
    idx.sort(key=lambda i: (-plens[i], -max(rlens[i]), i))
    lengths = np.array([plens[i] for i in idx], dtype=np.int64)
    return [idx[s:e] for s, e in _plan_groups(lengths, batch_tokens)]


def _plan_groups(lengths: np.ndarray, batch_tokens: int) -> list[tuple[int, int]]:
    """Split rows sorted by decreasing length into forward calls of at most ``batch_tokens``
    padded positions (a single row may exceed it), minimising padded positions plus
    ``_CALL_OVERHEAD_TOKENS`` per call (`genies.models.memory.plan_groups`)."""
    return plan_groups(lengths, token_rows(lengths, batch_tokens), _CALL_OVERHEAD_TOKENS)


def _select_cache(cache, rows: torch.Tensor):
    """A cache holding ``rows`` of ``cache`` (repeats allowed); ``cache`` is left intact.

    Shallow copies of the cache and its layers, then ``batch_select_indices``: dynamic
    layers rebind their tensors (``keys = keys[rows]``, ``keys = cat(...)``) rather than
    writing in place, so neither the selection nor the following forward pass touches
    the prompt cache, which the next group reuses.
    """
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    # with a device map each layer's cache lives on that layer's device: index it there
    on_device = {}
    for layer in new.layers:
        keys = getattr(layer, "keys", None)
        dev = keys.device if isinstance(keys, torch.Tensor) else rows.device
        if dev not in on_device:
            on_device[dev] = rows.to(dev)
        layer.batch_select_indices(on_device[dev])
    return new


def _restore_order(
    batches: list[list[int]], batch_scores: list[list[np.ndarray]], base: dict
) -> np.ndarray:
    """The one place where results go back to the caller's example order."""
    logprob = base["logprob_sum"]
    offsets = base["offsets"]
    for batch, scores in zip(batches, batch_scores, strict=True):
        for ex, s in zip(batch, scores, strict=True):
            logprob[offsets[ex] : offsets[ex + 1]] = s
    return logprob


# --------------------------------------------------------------------------- scoring

_no_capture = contextlib.nullcontext


@contextlib.contextmanager
def _keep_rows(model, keep: torch.Tensor):
    """The LM head computes logits only at the `keep` positions of the next forward call.

    The mask is applied where the hidden states are: with a device map the final norm (and so
    the LM head's input) sits on the map's last device, while the model's top-level accelerate
    hook moves every tensor argument, a boolean ``logits_to_keep`` included, to its first
    device; indexing a tensor with a mask on another device fails. Without an output
    embedding module the full logits are computed (and indexed by the caller).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    masks: dict[torch.device, torch.Tensor] = {}

    def select(module, args):
        h = args[0]
        if h.dim() != 3 or h.shape[:2] != keep.shape:
            raise RuntimeError(
                f"{type(model).__name__}'s output embeddings got a {tuple(h.shape)} input, "
                f"expected the [rows, positions] = {tuple(keep.shape)} hidden states"
            )
        if h.device not in masks:
            masks[h.device] = keep.to(h.device)
        return (h[masks[h.device]], *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def _score_batch(
    model,
    prompts: list[Sequence[int]],
    responses: list[Sequence[Sequence[int]]],
    device: torch.device,
    pad_id: int,
    keep_ok: bool,
    batch_tokens: int,
    shared: Sequence[int],
    capture=None,
    first_rows: Sequence[int] | None = None,
    meter: ScoringCosts | None = None,
    read_offsets: Sequence[int] | None = None,
) -> tuple[list[np.ndarray], int, int]:
    """Score one batch; returns per-example float64 arrays, positions fed, forward calls.

    `prompts` end with the `shared[i]` tokens that all responses of example `i` start with
    (taken off the responses); their log-probability is added to every response's score.

    With `capture` (an `ActivationCapture`), responses are fed whole so that their last
    token is processed, and the activations at that token go to output row
    `first_rows[example] + response`.
    """
    meter = meter or ScoringCosts(None, 0, 0)  # `meter` notes each call's rows and bytes
    b = len(prompts)
    ks = [len(rs) for rs in responses]
    plens = [len(p) for p in prompts]
    lp = max(plens)

    # ---- pass 1: left-padded prompts, logits of the last position only
    ids = np.full((b, lp), pad_id, dtype=np.int64)
    mask = np.zeros((b, lp), dtype=np.int64)
    for i, p in enumerate(prompts):
        ids[i, lp - len(p) :] = p
        mask[i, lp - len(p) :] = 1
    mask_t = torch.from_numpy(mask).to(device)
    pos_t = (mask_t.cumsum(-1) - 1).clamp(min=0)
    kept = max(shared) + 1  # positions whose logits are needed, the last ones
    meter.prompt_pass(b, lp, kept)
    kw = {"logits_to_keep": kept} if keep_ok else {}
    out = model(
        input_ids=torch.from_numpy(ids).to(device),
        attention_mask=mask_t,
        position_ids=pos_t,
        use_cache=True,
        **kw,
    )
    tail = out.logits[:, -kept:, :].to(device)  # [B, kept, V]; a device map may end elsewhere
    # transformers 5.24 renamed the KV cache `past_key_values` -> `cache` (the old name
    # warns); the output names it the way the model's forward takes it back
    cache_name = "cache" if "cache" in out.keys() else "past_key_values"
    cache = out[cache_name]
    del out
    fed, calls = b * lp, 1

    # ---- first response token, predicted by the last prompt position
    flat = [r for rs in responses for r in rs]
    row_ex = np.repeat(np.arange(b), ks)
    rlens = np.array([len(r) for r in flat], dtype=np.int64)
    sums = torch.zeros(len(flat), dtype=torch.float64, device=device)
    if kept > 1:  # the shared prefix: token j of example i is predicted by tail[i, kept-1-c+j]
        ex = torch.from_numpy(np.repeat(np.arange(b), shared)).to(device)
        pos = torch.from_numpy(
            np.concatenate([np.arange(kept - 1 - c, kept - 1) for c in shared])
        ).to(device)
        targets = [t for p, c in zip(prompts, shared, strict=True) if c for t in p[-c:]]
        lp_shared = _target_logprobs(
            tail[ex, pos], torch.tensor(targets, dtype=torch.long, device=device)
        )
        per_example = torch.zeros(b, dtype=torch.float64, device=device)
        per_example.index_add_(0, ex, lp_shared.double())
        sums += per_example[torch.from_numpy(row_ex).to(device)]
    last = tail[:, -1, :]  # [B, V]
    del tail
    has = np.nonzero(rlens > 0)[0]
    if len(has):
        first = torch.tensor([flat[j][0] for j in has], dtype=torch.long, device=device)
        ex_t = torch.from_numpy(row_ex[has]).to(device)
        lp_first = _target_logprobs(last[ex_t], first)
        sums.index_add_(0, torch.from_numpy(has).to(device), lp_first.double())
    del last

    # ---- pass 2: responses minus their last token (whole when capturing), grouped by
    # length, each group continuing from the rows of the prompt cache it needs
    fed_len = rlens if capture is not None else rlens - 1
    multi = np.nonzero(fed_len > 0)[0]
    order = multi[np.argsort(-fed_len[multi], kind="stable")]
    plen_all = torch.tensor(plens, dtype=torch.long, device=device)
    if capture is not None:
        within = np.concatenate([np.arange(k) for k in ks]) if ks else np.zeros(0, np.int64)
        out_rows = np.asarray(first_rows)[row_ex] + within
    for s, e in _plan_groups(fed_len[order], batch_tokens):
        rows = order[s:e]
        lr = int(fed_len[rows[0]])
        ids2 = np.full((len(rows), lr), pad_id, dtype=np.int64)
        tgt2 = np.zeros((len(rows), lr), dtype=np.int64)
        mask2 = np.zeros((len(rows), lr), dtype=np.int64)
        for j, row in enumerate(rows):
            r = flat[row]
            n = int(fed_len[row])
            ids2[j, :n] = r[:n]
            tgt2[j, : len(r) - 1] = r[1:]
            mask2[j, :n] = 1
        ex_t = torch.from_numpy(row_ex[rows]).to(device)
        mask2_t = torch.from_numpy(mask2).to(device)
        # positions whose logits predict a response token (all but a whole response's last)
        keep = mask2_t.bool()
        if capture is not None:
            last_pos = torch.from_numpy(rlens[rows] - 1).to(device)
            keep[torch.arange(len(rows), device=device), last_pos] = False
            back = np.asarray(read_offsets if read_offsets is not None else [0] * b)[row_ex[rows]]
            read_pos = torch.from_numpy(np.maximum(rlens[rows] - 1 - back, 0)).to(device)
        meter.response_call(b, lp, len(rows), lr)
        with (
            capture.capture(out_rows[rows], read_pos) if capture is not None else _no_capture(),
            _keep_rows(model, keep) if keep_ok else _no_capture(),
        ):
            out = model(
                input_ids=torch.from_numpy(ids2).to(device),
                attention_mask=torch.cat([mask_t[ex_t], mask2_t], dim=1),
                position_ids=plen_all[ex_t][:, None] + torch.arange(lr, device=device)[None, :],
                **{cache_name: _select_cache(cache, ex_t)},
                use_cache=True,
            )
        logits = out.logits.to(device)
        del out
        if logits.dim() == 3:  # the LM head saw every position
            logits = logits[keep]
        g_rows, g_cols = keep.nonzero(as_tuple=True)
        if len(g_rows):
            targets = torch.from_numpy(tgt2).to(device)[g_rows, g_cols]
            tok_lp = _target_logprobs(logits, targets)
            sums.index_add_(0, torch.from_numpy(rows).to(device)[g_rows], tok_lp.double())
        del logits
        fed += len(rows) * lr
        calls += 1
    del cache

    sums_np = sums.cpu().numpy()
    return list(np.split(sums_np, np.cumsum(ks)[:-1])), fed, calls


def _check_context(model, plens, rlens, skipped) -> None:
    """Refuse texts longer than the model's positions (the context policy must cut them)."""
    limit = max_positions(model)
    if limit is None:
        return
    over = [
        i
        for i, (pl, rl) in enumerate(zip(plens, rlens, strict=True))
        if rl and not skipped[i] and pl + max(rl) > limit
    ]
    if over:
        i = over[0]
        raise ValueError(
            f"{len(over)} examples do not fit the model's {limit} positions (example {i}: "
            f"{plens[i]} prompt + {max(rlens[i])} response tokens); apply the context policy "
            "first (genies.models.context.fit_examples) and skip or cut them"
        )


def _warn_sliding_window(model, plens, rlens) -> None:
    cfg = getattr(model, "config", None)
    get_text = getattr(cfg, "get_text_config", None)
    cfg = get_text(decoder=True) if callable(get_text) else cfg
    window = getattr(cfg, "sliding_window", None)
    if isinstance(window, int) and window > 0:
        longest = max((pl + max(rl) for pl, rl in zip(plens, rlens, strict=True) if rl), default=0)
        if longest > window:
            warnings.warn(
                f"model uses a sliding window of {window} tokens and some sequences are "
                f"{longest} tokens long: with left padding, batched scores can differ from "
                "unpadded ones beyond the window",
                stacklevel=3,
            )


def score_tokenized(
    model,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[Sequence[int]]],
    *,
    batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
    budget: Budget | None = None,
    device=None,
    progress: ProgressFn | None = None,
    capture=None,
    skip=None,
    read_offset=0,
) -> ScoreResult:
    """Summed log-probability of every response given its prompt, with prefix reuse.

    Args:
        model: a transformers causal LM (any dtype, CPU or CUDA).
        prompt_ids: per example, the prompt token ids (>= 1 token when it has responses).
        response_ids: per example, the token ids of each of its responses.
        batch_tokens: maximum padded positions per forward pass (see module docstring);
            a batch always holds at least one example. None: as many as `budget` allows.
        budget: a ``genies.models.memory.Budget``; a limited one lowers ``batch_tokens`` until the
            prompt cache, its copies and a response call fit (``genies.models.memory``), and
            records the plan. An out-of-memory error halves ``batch_tokens`` and goes on
            with the batch that failed; only one example whose single row does not fit
            raises ``genies.models.memory.MemoryPlanError``.
        device: where to put inputs; defaults to ``model.device``.
        progress: called as ``progress(done_examples, total_examples)`` after each batch.
        capture: an ``genies.forward.activations.ActivationCapture``; its writer receives the
            last-token activations of every response, row ``offsets[example] + response``.
        skip: per example, True to leave it unscored (``genies.models.context.ContextFit.skipped``):
            its responses get ``logprob_sum`` NaN and no activations.
        read_offset: with `capture`, read the activations this many tokens before each
            response's last token (1: the last response token before an appended EOS); one
            number, or one per example.

    Every other example must fit the model's positions (``genies.models.context.max_positions``):
    apply the context policy (``genies.models.context.fit_examples``) first; a longer one raises.

    Returns:
        A :class:`ScoreResult` in the caller's example and response order.
    """
    if batch_tokens is not None and batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    plens, rlens = _validate(prompt_ids, response_ids)
    skipped = np.zeros(len(plens), bool) if skip is None else np.asarray(skip, dtype=bool)
    if skipped.shape != (len(plens),):
        raise ValueError(f"skip has {skipped.shape} entries for {len(plens)} examples")
    _check_context(model, plens, rlens, skipped)
    unique, _ = _counts(plens, rlens)
    # the responses' shared start joins the prompt (module docstring, "Prefix reuse")
    offsets = np.broadcast_to(np.asarray(read_offset, dtype=np.int64), (len(plens),))
    # (with a read offset, the token read must stay in the response pass)
    keeps = 1 + (offsets if capture is not None else 0 * offsets)
    shared = [_shared_prefix(rs, int(k)) for rs, k in zip(response_ids, keeps, strict=True)]
    pairs = zip(prompt_ids, response_ids, shared, strict=True)
    prompt_ids = [[*p, *rs[0][:c]] if c else p for p, rs, c in pairs]
    response_ids = [
        [r[c:] for r in rs] if c else rs for rs, c in zip(response_ids, shared, strict=True)
    ]
    ext_plens, ext_rlens = _validate(prompt_ids, response_ids)
    ext_rlens = [[] if s else rl for rl, s in zip(ext_rlens, skipped, strict=True)]
    base = _empty_result(rlens, unique, _counts(ext_plens, ext_rlens)[1])
    dev = _resolve_device(model, device)
    keep_ok = _accepts_logits_to_keep(model)
    _warn_sliding_window(model, plens, rlens)
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    pad_id = pad_id if isinstance(pad_id, int) and pad_id >= 0 else 0

    meter = _meter(model, dev)
    tokens = _batch_tokens(meter, budget, batch_tokens, ext_plens, ext_rlens, capture)
    plan = {"batch_tokens": tokens, "budget": budget.describe() if budget else "unlimited"}
    pending = _plan_batches(ext_plens, ext_rlens, tokens)
    total = len(plens)
    done = total - sum(len(b) for b in pending)  # examples without responses
    batches: list[list[int]] = []
    batch_scores: list[list[np.ndarray]] = []
    fed = calls = 0
    backoffs = []
    with _EvalMode(model), torch.inference_mode():
        while pending:
            batch = pending[0]
            try:
                scores, n_fed, n_calls = _score_batch(
                    model,
                    [prompt_ids[i] for i in batch],
                    [response_ids[i] for i in batch],
                    dev,
                    pad_id,
                    keep_ok,
                    tokens,
                    [shared[i] for i in batch],
                    capture,
                    [int(base["offsets"][i]) for i in batch],
                    meter,
                    [int(offsets[i]) for i in batch],
                )
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                if len(batch) == 1 and meter.rows <= 1:  # nothing left to make smaller
                    raise MemoryPlanError(
                        out_of_memory_message(
                            exc,
                            f"scoring one example alone ({ext_plens[batch[0]]} prompt and "
                            f"{max(ext_rlens[batch[0]])} response tokens)",
                            _OOM_ADVICE,
                        )
                    ) from None
                failed_rows = meter.rows
            else:
                pending.pop(0)
                batches.append(batch)
                batch_scores.append(scores)
                fed += n_fed
                calls += n_calls
                done += len(batch)
                if progress is not None:
                    progress(done, total)
                continue
            # out of memory: the failed batch and the rest again, with calls half as large
            release_memory()
            tokens = max(1, tokens // 2)
            event = {"after_examples": done, "failed_rows": failed_rows, "batch_tokens": tokens}
            backoffs.append(budget.note("backoff", **event) if budget else event)
            if budget is None:
                warnings.warn(f"out of memory while scoring: {event}", stacklevel=2)
            pending = _plan_batches(ext_plens, ext_rlens, tokens, [i for b in pending for i in b])
    _restore_order(batches, batch_scores, base)
    base["logprob_sum"][np.repeat(skipped, np.diff(base["offsets"]))] = np.nan
    plan.update(planned_peak_bytes=meter.peak, backoffs=backoffs)
    if budget is not None:
        budget.note("scoring", **{k: v for k, v in plan.items() if k != "backoffs"})
    return ScoreResult(**base, tokens_processed=fed, n_forward=calls, plan=plan)


_OOM_ADVICE = (
    "Spread the model over more GPUs (`gpus:` in its registry entry), use GPUs with more "
    "memory, or cut long prompts (`context_policy`)."
)


def _meter(model, device: torch.device) -> ScoringCosts:
    """The memory model of `model`'s scoring calls (zero costs for an unknown shape)."""
    chunk = 8 * _LOGIT_CHUNK_ELEMENTS.get(device.type, _LOGIT_CHUNK_ELEMENTS["cuda"])
    try:
        shape = Shape.of(model)
    except (AttributeError, TypeError, ValueError):
        return ScoringCosts(None, 0, 0)
    dtype = getattr(model, "dtype", None) or next(model.parameters()).dtype
    return ScoringCosts(shape, dtype_bytes(dtype), chunk)


def _batch_tokens(meter, budget, batch_tokens, plens, rlens, capture) -> int:
    """`batch_tokens` for this attempt, lowered so that the calls fit the budget."""
    cap = budget.cap(batch_tokens) if budget is not None else batch_tokens
    usable = budget.usable if budget is not None else None
    if usable is None or meter.shape is None:
        return cap if cap is not None else DEFAULT_BATCH_TOKENS
    scored = [i for i, rl in enumerate(rlens) if rl]
    if not scored:
        return cap if cap is not None else DEFAULT_BATCH_TOKENS
    k = max(len(rlens[i]) for i in scored)
    fed = max(max(rlens[i]) for i in scored) - (capture is None)
    fits = meter.batch_tokens(usable, k, max(plens[i] for i in scored), max(fed, 1))
    if fits is None:
        warnings.warn(
            f"the memory budget ({budget.describe()}) holds less than one position of this "
            "model's scoring calls; trying one row at a time",
            stacklevel=3,
        )
        fits = 1
    return min(cap, fits) if cap is not None else fits


def score_naive(
    model,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[Sequence[int]]],
    device=None,
) -> ScoreResult:
    """Reference scorer: every ``prompt + response`` is its own unpadded batch of one.

    This is the plain per-pair loop (no padding, no cache, full float32 log-softmax);
    it is the oracle for :func:`score_tokenized` and the benchmark baseline.
    """
    plens, rlens = _validate(prompt_ids, response_ids)
    unique, needed = _counts(plens, rlens)
    base = _empty_result(rlens, unique, needed)
    dev = _resolve_device(model, device)
    fed = calls = 0
    out = base["logprob_sum"]
    offsets = base["offsets"]
    with _EvalMode(model), torch.inference_mode():
        for i, (p, rs) in enumerate(zip(prompt_ids, response_ids, strict=True)):
            for j, r in enumerate(rs):
                if len(r) == 0:
                    continue
                seq = torch.tensor([[*p, *r]], dtype=torch.long, device=dev)
                logits = model(input_ids=seq).logits[0].float()
                logp = torch.log_softmax(logits[len(p) - 1 : -1], dim=-1)
                tgt = seq[0, len(p) :]
                val = logp.gather(1, tgt[:, None]).double().sum()
                out[offsets[i] + j] = float(val)
                fed += seq.shape[1]
                calls += 1
    return ScoreResult(**base, tokens_processed=fed, n_forward=calls)


# --------------------------------------------------------------------------- post-processing
