"""Token ids of prompts and responses, as every scorer and reward model reads them.

Data is text: prompts, responses, few-shot demonstrations (part of their prompts) and the text a
stimulus puts after a response are encoded with the tokenizer's special-token parsing off
(``split_special_tokens=True``), so "Hello<|endoftext|>" is the characters it shows and never
SmolLM2's end of text. Only the chat template's own text and the BOS and EOS added here are
control tokens (the published code parsed them: docs/fidelity.md). In a chat template the
user's prompt is found with `genies.data.chat.Turns.user`; a prompt or stimulus text that holds
a special-token string of the tokenizer is encoded piece by piece (the template's text parsed,
the data not), every other one as one string, as before.

Prompt and responses are tokenised *separately* and without special tokens; the
response text directly follows the prompt with no separator, as in the published
GENIES code. The prompt gets the tokenizer's BOS prepended (when ``add_bos`` and the
tokenizer has one) so that the first prompt token is conditioned on something; each
response gets EOS appended (when ``append_eos``), and that EOS is scored as part of
the response, as upstream did. A prompt must contribute at least one token (its last
position predicts the first response token): a prompt that is still empty after
this (empty text with ``add_bos=False`` or no BOS token) falls back to ``[bos]``, or
``[eos]`` when the tokenizer has no BOS. A model whose registry entry asks for its chat
template gets the prompt as the user's message in it, the template's end of turn in
place of EOS and no added BOS (`genies.data.chat`).

The context policy (`genies.models.context`) counts and cuts these ids; the scorer
(`genies.forward.scoring`), the forward job, the trained reward models and the user's own
reward models all tokenise through `tokenize_examples`, so a text is the same tokens in each.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from genies.data import chat


def tokenize_examples(
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    add_bos: bool = True,
    append_eos: bool = True,
    chat_template: bool | None = None,
    assistant_starts: Sequence[str] | None = None,
) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Tokenise prompts and responses separately, without the tokenizer's special tokens.

    Returns ``(prompt_ids, response_ids)`` with ``response_ids[i][j]`` the ids of the
    ``j``-th response of example ``i``. BOS is prepended to each prompt when ``add_bos``
    and the tokenizer has a BOS token; EOS is appended to each response when
    ``append_eos`` (a tokenizer without EOS then raises ``ValueError``). A prompt that
    would be empty becomes ``[bos]`` (or ``[eos]`` without BOS), so it always has a
    position that predicts the first response token. ``assistant_starts[i]`` is text
    that follows prompt ``i`` before each of its responses (a stimulus's frame).

    ``chat_template`` (default: what the model's registry entry asks, `genies.data.chat.requested`)
    puts each prompt in the tokenizer's chat template as the user's message
    (`genies.data.chat.turns`): no BOS is prepended (the template writes it), and the template's
    end of turn takes the place of EOS.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    if chat_template is None:
        chat_template = chat.requested(tokenizer)
    starts = [""] * len(prompts) if assistant_starts is None else list(assistant_starts)
    ends = None
    if chat_template:
        turns = chat.turns(tokenizer, prompts)
        add_bos, ends = False, turns.after
        prompt_ids = _templated_prompt_ids(tokenizer, prompts, turns, starts)
    else:
        prompt_ids = _encode(tokenizer, [p + s for p, s in zip(prompts, starts, strict=True)])
    end_ids = _response_ends(tokenizer, len(responses), append_eos, ends)
    flat = _encode(tokenizer, [r for rs in responses for r in rs])

    fallback = bos if bos is not None else eos
    out_prompts: list[list[int]] = []
    for i, ids in enumerate(prompt_ids):
        if add_bos and bos is not None:
            ids = [bos, *ids]
        if not ids:
            if fallback is None:
                raise ValueError(f"prompt {i} is empty and the tokenizer has no BOS/EOS token")
            ids = [fallback]
        out_prompts.append(ids)

    out_responses: list[list[list[int]]] = []
    pos = 0
    for i, rs in enumerate(responses):
        out_responses.append([[*ids, *end_ids[i]] for ids in flat[pos : pos + len(rs)]])
        pos += len(rs)
    return out_prompts, out_responses


def appended_tokens(
    tokenizer, prompts: Sequence[str], append_eos: bool = True, chat_template: bool | None = None
) -> np.ndarray:
    """Per example, how many tokens `tokenize_examples` appends to each of its responses
    (EOS, or the chat template's end of turn; 0 without `append_eos`), without tokenising the
    texts again."""
    if chat_template is None:
        chat_template = chat.requested(tokenizer)
    ends = chat.turns(tokenizer, prompts).after if chat_template else None
    return np.array([len(e) for e in _response_ends(tokenizer, len(prompts), append_eos, ends)])


def _encode(tokenizer, texts: list[str], markup: bool = False) -> list[list[int]]:
    """Ids of `texts`, nothing added around them. Data is text: its special-token strings are
    encoded as characters; only `markup` (a chat template's own text) is parsed for them."""
    if not texts:
        return []
    # verbose=False: no "longer than the maximum" warning; genies.models.context checks lengths
    encoded = tokenizer(
        texts, add_special_tokens=False, split_special_tokens=not markup, verbose=False
    )
    return [list(ids) for ids in encoded["input_ids"]]


def _templated_prompt_ids(tokenizer, prompts, turns, starts) -> list[list[int]]:
    """Ids of each chat-templated prompt (`turns.before`) and its assistant start: the
    template's text parsed for control tokens, the user's prompt and the start as text."""
    special = special_token_pattern(tokenizer)
    marked = [
        i for i, (p, s) in enumerate(zip(prompts, starts, strict=True))
        if special.search(p) or special.search(s)
    ]  # fmt: skip
    # without a special-token string in its data, the whole text parsed has only the template's
    whole = sorted(set(range(len(prompts))) - set(marked))
    texts = [turns.before[i] + starts[i] for i in whole]
    ids = dict(zip(whole, _encode(tokenizer, texts, markup=True), strict=True))
    for i in marked:
        if turns.user[i] is None:
            raise chat.ChatTemplateError(
                f"prompt {i} holds a special-token string, which must stay text, but the chat "
                "template writes text around it that depends on it, so the prompt cannot be "
                "told apart from the template's own control tokens; remove `chat_template`"
            )
        a, b = turns.user[i]
        text = turns.before[i]
        ids[i] = [
            *_encode(tokenizer, [text[:a]], markup=True)[0],
            *_encode_within(tokenizer, text[a:b], markup=False),
            *_encode_within(tokenizer, text[b:], markup=True),
            *_encode_within(tokenizer, starts[i], markup=False),
        ]
    return [ids[i] for i in range(len(prompts))]


def _encode_within(tokenizer, text: str, markup: bool) -> list[int]:
    """Ids of `text` in the middle of a sequence: encoded after a newline that is then dropped,
    so that a SentencePiece tokenizer adds no prefix space (as transformers' own sanitised chat
    templates do)."""
    if not text:
        return []
    newline, ids = _encode(tokenizer, ["\n", "\n" + text], markup)
    if ids[: len(newline)] == newline:
        return ids[len(newline) :]
    return _encode(tokenizer, [text], markup)[0]


def special_token_pattern(tokenizer) -> re.Pattern:
    """Matches the strings of `tokenizer`'s special tokens (those `split_special_tokens` keeps
    as text), longest first."""
    strings = sorted(
        (t.content for t in tokenizer.added_tokens_decoder.values() if t.special),
        key=len,
        reverse=True,
    )
    return re.compile("|".join(map(re.escape, strings)) or "(?!)")  # (?!): matches nothing


def _response_ends(tokenizer, n: int, append_eos: bool, ends) -> list[list[int]]:
    """The ids appended to every response of each of `n` examples: nothing without
    `append_eos`, else the chat template's end of turn (`ends`, text per example) or EOS."""
    if not append_eos:
        return [[]] * n
    if ends is not None:
        distinct = list(dict.fromkeys(ends))
        by_text = dict(zip(distinct, _encode(tokenizer, distinct, markup=True), strict=True))
        return [by_text[text] for text in ends]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("append_eos=True but the tokenizer has no eos_token_id")
    return [[eos]] * n
