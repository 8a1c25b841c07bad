"""Context policy: every scored text must fit the model's positions.

A text is ``[BOS] prompt response [EOS]`` as `genies.models.tokens.tokenize_examples` builds it; it
fits when ``len(prompt) + len(response) <= max_positions`` (`max_positions`: the smaller of the
model config's ``max_position_embeddings`` and the tokenizer's ``model_max_length``). All
responses of an example share its prompt, so the longest response decides.

An example that does not fit gets the context policy (config ``context_policy``):

- ``cut_prompt`` (default): the prompt loses tokens from its left, just after BOS (BOS is kept,
  so the text still starts like every other), until the longest response fits whole. What is
  judged, the response, is never cut, and every pair is still scored, so all interventions of a
  model are compared on the same pairs.
- ``skip``: the example is not scored.

Either way the number of prompt tokens cut (`prompt_tokens_cut`) and whether the example was
skipped are returned per example, for the prediction rows and the cell counts. An example whose
response alone (with BOS) does not fit is skipped under both policies.

Few-shot prompts (`genies.forward.baselines.fit_few_shot`) first drop demonstrations, the last one
first, until the prompt fits with the example's longest response; the number kept is returned
per example. Only an example that does not fit even with no demonstration goes on to the policy
above. (Upstream dropped whole examples instead, docs/fidelity.md.)

The reward models cut their texts with the same left cut (`cut_to_length`): a sequence longer
than its limit keeps its first token and its last ``limit - 1`` (the reward is read at the
last token).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from genies.models.tokens import tokenize_examples

POLICIES = ("cut_prompt", "skip")
DEFAULT_POLICY = "cut_prompt"
# transformers' "no limit" sentinel for model_max_length is 1e30; anything this big means unset
_UNSET = 10**12


def max_positions(model_or_config=None, tokenizer=None) -> int | None:
    """The positions a model can attend over, or None when neither source says.

    The smaller of the (text) config's ``max_position_embeddings`` and the tokenizer's
    ``model_max_length`` (ignored when it is transformers' "unset" sentinel).
    """
    limits = []
    config = getattr(model_or_config, "config", model_or_config)
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        config = get_text()
    value = getattr(config, "max_position_embeddings", None) if config is not None else None
    if isinstance(value, int) and 0 < value < _UNSET:
        limits.append(value)
    value = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if isinstance(value, (int, float)) and 0 < value < _UNSET:
        limits.append(int(value))
    return min(limits) if limits else None


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown context policy {policy!r}; allowed: {', '.join(POLICIES)}")
    return policy


@dataclass(frozen=True)
class ContextFit:
    """Per example: the (possibly cut) prompt ids, tokens cut, and whether it was skipped.

    A skipped example keeps its prompt ids unchanged; the caller must not score it.
    """

    prompt_ids: list[list[int]]
    prompt_tokens_cut: np.ndarray  # int32 [n_examples]
    skipped: np.ndarray  # bool [n_examples]
    max_positions: int | None

    @property
    def n_cut(self) -> int:
        return int(np.count_nonzero(self.prompt_tokens_cut))

    @property
    def n_skipped(self) -> int:
        return int(np.count_nonzero(self.skipped))

    def kept(self) -> np.ndarray:
        """Indices of the examples to score."""
        return np.flatnonzero(~self.skipped)

    def summary(self) -> dict:
        """Counts for provenance and logs."""
        return {
            "max_positions": self.max_positions,
            "examples_cut": self.n_cut,
            "prompt_tokens_cut": int(self.prompt_tokens_cut.sum()),
            "examples_skipped": self.n_skipped,
        }


def fit_examples(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[Sequence[int]]],
    limit: int | None,
    policy: str = DEFAULT_POLICY,
    bos_id: int | None = None,
) -> ContextFit:
    """Apply the context policy to tokenised examples (see the module docstring).

    `limit` None means no limit. A prompt starting with `bos_id` keeps that token when cut; any
    prompt keeps at least one token (it predicts the first response token).
    """
    check_policy(policy)
    n = len(prompt_ids)
    if len(response_ids) != n:
        raise ValueError(f"{n} prompts but {len(response_ids)} response lists")
    cut = np.zeros(n, dtype=np.int32)
    skipped = np.zeros(n, dtype=bool)
    out = []
    for i, (p, rs) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        p = list(p)
        longest = max((len(r) for r in rs), default=0)
        excess = len(p) + longest - limit if limit is not None else 0
        if excess <= 0:
            out.append(p)
            continue
        keep = 1 if p and bos_id is not None and p[0] == bos_id else 0
        if policy == "skip" or len(p) - excess < max(keep, 1):
            skipped[i] = True
            out.append(p)
            continue
        out.append(p[:keep] + p[keep + excess :])
        cut[i] = excess
    return ContextFit(out, cut, skipped, limit)


def cut_to_length(seq: Sequence[int], limit: int | None) -> tuple[list[int], int]:
    """`seq` within `limit` tokens: its first token and its last ``limit - 1``; and the cut."""
    seq = list(seq)
    if limit is None or len(seq) <= limit:
        return seq, 0
    if limit < 2:
        raise ValueError(f"a length limit must be >= 2 tokens, got {limit}")
    return seq[:1] + seq[len(seq) - (limit - 1) :], len(seq) - limit


def prompt_token_counter(tokenizer, add_bos: bool = True) -> Callable[[list[str]], list[int]]:
    """Token counts of prompt texts exactly as `genies.models.tokens.tokenize_examples` builds
    them."""

    def count(texts: list[str]) -> list[int]:
        ids, _ = tokenize_examples(tokenizer, texts, [[] for _ in texts], add_bos=add_bos)
        return [len(p) for p in ids]

    return count
