"""How a prompt and a response become a model's text: plain, or in its tokenizer's chat template.

Plain (the default; the published GENIES convention, `genies.models.tokens.tokenize_examples`):
``[BOS] prompt`` then ``response EOS``.

Chat (a model registry entry with ``chat_template: true``): the prompt is the user's message and
the response the assistant's. The text before a response is what the tokenizer's chat template
renders for the conversation [user: prompt, assistant: response] up to the response's first
character: the templated prompt with the assistant header (``apply_chat_template(...,
add_generation_prompt=True)``), plus whatever the template writes before an assistant message's
content (Llama 2's space, Qwen 3's empty think block). The text after the response is what the
template writes after the assistant's content (its end of turn: ``<|im_end|>\\n``,
``<|eot_id|>``, ...); it takes the place of EOS. Nothing else is added: the template writes
BOS when the model uses one (``{{ bos_token }}``), so no second BOS is prepended. The templated
prompt and assistant header are the prompt of the prefix-reuse scorer: fed once, every response
continues from its KV cache. Text a stimulus puts between the prompt and the scored tokens (the
LAT stimulus-2 frame, the yes/no question after the response) is the start of the assistant's
turn (`tokenize_examples(..., assistant_starts=...)`): only the dataset's prompt is the user's.

Only the template's own text is parsed for special tokens: the user's prompt inside it is data
(`Turns.user` says where it lies, found by rendering the template around a second sentinel),
and `genies.models.tokens` encodes it, like the assistant's start, as text.

A template that reads the current date (``strftime_now``, e.g. Llama 3.2) makes the texts, and
so the scores, depend on the day they were computed: a warning says so.

Sequence-classification reward models without a chat template use their tokenizer's own special
tokens (`own_special_ids`: what ``tokenizer(text)`` adds around the text), as they were trained.

Which convention a loaded model uses is decided by its registry entry:
`genies.models.loading.load_model` marks the tokenizer (`mark`), and `tokenize_examples` follows the
mark (`requested`) unless a caller says otherwise, so every job that tokenises for the model
(forward passes of every stimulus, few-shot scoring, reward-model training and prediction,
sequence-classifier scoring) applies it the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from genies.errors import GeniesError

log = logging.getLogger(__name__)

# Stand in for the assistant's and the user's content when rendering, to find where a response
# starts and what follows it, and where the user's prompt lies. Plain characters only: a template
# may trim or escape content.
SENTINEL = "GENIESRESPONSE7f3a9c"
USER_SENTINEL = "GENIESPROMPT5b81e2"
_MARK = "_genies_chat_template"


class ChatTemplateError(GeniesError, ValueError):
    """A model asks for its chat template, but its tokenizer has none or it cannot be used."""


def mark(tokenizer, chat_template: bool) -> None:
    """Record on a loaded tokenizer whether its model's registry entry asks for the template."""
    if chat_template:
        require_template(tokenizer)
    setattr(tokenizer, _MARK, bool(chat_template))


def requested(tokenizer) -> bool:
    """Whether texts for this tokenizer's model go through its chat template (`mark`)."""
    return bool(getattr(tokenizer, _MARK, False))


def require_template(tokenizer, where: str = "") -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"the model{' in ' + str(where) if where else ''} asks for its chat template "
            "(`chat_template: true` in the model registry), but its tokenizer has none; "
            "remove `chat_template` or use a tokenizer with a template"
        )


@dataclass(frozen=True)
class Turns:
    """Per prompt: the text before the response, the text after it, and where in `before` the
    user's prompt lies as the template wrote it ((start, end), or None when the template's text
    around it differs from its text around a sentinel)."""

    before: list[str]
    after: list[str]
    user: list[tuple[int, int] | None]


def turns(tokenizer, prompts: Sequence[str]) -> Turns:
    """The chat template's text around the assistant's response, for every user prompt."""
    require_template(tokenizer)
    if "strftime_now" in str(tokenizer.chat_template):
        log.warning(
            "the chat template reads the current date: texts and scores depend on the day "
            "they are computed"
        )
    if not prompts:
        return Turns([], [], [])
    user = [[{"role": "user", "content": p}] for p in [USER_SENTINEL, *prompts]]
    headers = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    try:
        full = tokenizer.apply_chat_template(
            [[*u, {"role": "assistant", "content": SENTINEL}] for u in user], tokenize=False
        )
    except Exception as exc:  # a template's own error (jinja's raise_exception)
        raise ChatTemplateError(
            f"the chat template cannot render a user message and an assistant answer: {exc}"
        ) from exc
    (frame, *headers), (frame_full, *full) = headers, full
    # the template's text before and after the user's prompt, in a generation prompt and in
    # the text before an answer
    frames = {
        "header": _around_user(frame),
        "lead": _around_user(frame_full.partition(SENTINEL)[0]),
    }
    before, after, spans = [], [], []
    for i, (header, text) in enumerate(zip(headers, full, strict=True)):
        if text.count(SENTINEL) != 1:
            raise ChatTemplateError(
                "the chat template does not write the assistant's message as given (prompt "
                f"{i}), so a response cannot be placed in it"
            )
        lead, tail = text.split(SENTINEL)
        kind = "lead"
        if not lead.startswith(header):
            # the template renders a past answer's header unlike the generation prompt (e.g. a
            # reasoning template's open think block): the generation prompt leads, as asked
            if i == 0:
                log.warning(
                    "the chat template's generation prompt %r differs from its header of an "
                    "answer %r; the generation prompt is used",
                    header[-40:],
                    lead[-40:],
                )
            lead, kind = header, "header"
        before.append(lead)
        after.append(tail)
        spans.append(_between(lead, frames[kind]))
    return Turns(before, after, spans)


def _around_user(text: str) -> list[str] | None:
    return text.split(USER_SENTINEL) if text.count(USER_SENTINEL) == 1 else None


def _between(text: str, frame) -> tuple[int, int] | None:
    """Where `text` holds the user's prompt: what the template wrote around the sentinel must
    be its start and its end."""
    if frame is None:
        return None
    opening, closing = frame
    end = len(text) - len(closing)
    if end < len(opening) or not (text.startswith(opening) and text.endswith(closing)):
        return None
    return len(opening), end


def own_special_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The ids `tokenizer` adds before and after a single text (its own special tokens)."""
    probe = "a"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError("the tokenizer's special tokens change the text's own tokens")
