"""Preference data in the common layouts, as GENIES records.

A GENIES record is `{"prompt": str, "responses": {text: score}}`, one response scored 1.0 (the
preferred one) and the others 0.0 (`genies.data.materialise.validate_examples`). The forward
pass appends each response directly to the prompt: `prompt_template` (a string holding
`{prompt}`) puts a bare question in a layout such as the GENIES datasets' own Alpaca layout.

Layouts (`layout` of a `distributions:` entry), each reading the columns `columns` names (by
default the role's own name, e.g. `prompt: prompt`):

- `pairs`: `prompt`, `chosen` and `rejected` are strings.
- `messages`: `chosen` and `rejected` are chat-message lists (`[{"role", "content"}, ...]`)
  ending in the assistant's answer; the messages before it must be the same in both and are the
  prompt. One user message is the prompt text; more (a system message, earlier turns) need
  `multi_turn: transcript`, which writes them as an HH-RLHF transcript.
- `transcript`: HH-RLHF. `chosen` and `rejected` are whole transcripts ("\\n\\nHuman: ...
  \\n\\nAssistant: ..."); the prompt is everything up to and including the last
  "\\n\\nAssistant:" and must be the same in both, the responses are the rest.
- `ranked`: `prompt`, and `responses` a list of strings with their scores in the `scores`
  column (a list as long), or a list of objects whose `text` and `score` keys hold them (rename
  the keys in `columns` too). The highest score is preferred. `keep: best_and_worst` (default)
  keeps it and the lowest-scored response (the first of several), `keep: all` keeps every
  response (every row must then have as many: a GENIES split has one response count).

A row without a single preferred response (chosen and rejected the same text, the highest score
shared) is an error, or, with `ties: drop`, left out and counted. Errors are `DataError`s that
name the user's file (or Hub split), row and column. The other scalar columns of a row are kept
as the example's metadata, with `source_location` and `source_row`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable

from genies.data.materialise import validate_examples
from genies.errors import DataError

# Layout -> role -> default column (for `ranked`, `text` and `score` are keys of the objects).
LAYOUTS = {
    "pairs": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    "messages": {"chosen": "chosen", "rejected": "rejected"},
    "transcript": {"chosen": "chosen", "rejected": "rejected"},
    "ranked": {
        "prompt": "prompt",
        "responses": "responses",
        "scores": "scores",
        "text": "text",
        "score": "score",
    },
}
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System"}
# A row's location: (the file or Hub split it is in, its row there).
Locate = Callable[[int], tuple[str, int]]


def columns_of(spec: dict) -> dict[str, str]:
    """Role -> the user's column (or object key) of a distribution entry."""
    return {**LAYOUTS[spec["layout"]], **(spec.get("columns") or {})}


def required_columns(spec: dict) -> list[str]:
    """The columns every row must have (`ranked` needs `scores` only for lists of strings)."""
    cols = columns_of(spec)
    roles = [r for r in LAYOUTS[spec["layout"]] if r not in ("scores", "text", "score")]
    return [cols[r] for r in roles]


class _Row:
    """One row of the user's data and how to name it in errors."""

    def __init__(self, values: dict, columns: dict, where: str, index: int):
        self.values, self.columns, self.where, self.index = values, columns, where, index

    def error(self, role: str, message: str) -> DataError:
        return DataError(self.where, message, record=self.index, field=self.columns[role])

    def value(self, role: str):
        value = self.values.get(self.columns[role])
        if value is None:
            raise self.error(role, "is missing (null or absent)")
        return value

    def text(self, role: str) -> str:
        value = self.value(role)
        if not isinstance(value, str):
            raise self.error(role, f"must be a string, found {type(value).__name__}")
        return value


class _Tie(Exception):
    """A row without a single preferred response (`ties: drop` leaves it out)."""

    def __init__(self, error: DataError):
        self.error = error


def _pair(row: _Row, prompt: str, chosen: str, rejected: str, role: str):
    if chosen == rejected:
        raise _Tie(row.error(role, "chosen and rejected are the same text: no preferred response"))
    return prompt, [chosen, rejected], 0, {}


def _pairs(row: _Row, spec: dict):
    return _pair(row, row.text("prompt"), row.text("chosen"), row.text("rejected"), "rejected")


def _conversation(row: _Row, role: str) -> list[dict]:
    value = row.value(role)
    if not isinstance(value, list) or not value:
        raise row.error(role, "must be a non-empty list of chat messages")
    for m in value:
        if not (
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            raise row.error(role, "every chat message must have a string 'role' and 'content'")
    if value[-1]["role"] != "assistant":
        raise row.error(
            role, f"the last message must be the assistant's, not {value[-1]['role']!r}"
        )
    return value


def _messages(row: _Row, spec: dict):
    chosen, rejected = _conversation(row, "chosen"), _conversation(row, "rejected")
    context = chosen[:-1]
    if rejected[:-1] != context:
        raise row.error(
            "rejected", "the messages before the last assistant message differ from chosen's"
        )
    if not context:
        raise row.error("chosen", "no prompt: the conversation is only the assistant's message")
    if len(context) == 1 and context[0]["role"] == "user":
        prompt = context[0]["content"]
    elif spec.get("multi_turn") == "transcript":
        turns = (f"\n\n{SPEAKERS.get(m['role'], m['role'])}: {m['content']}" for m in context)
        prompt = "".join(turns) + ASSISTANT + " "
    else:
        roles = ", ".join(m["role"] for m in context)
        raise row.error(
            "chosen",
            f"the prompt is {len(context)} messages ({roles}), a GENIES prompt one user message: "
            "set `multi_turn: transcript` to write them as a transcript",
        )
    return _pair(row, prompt, chosen[-1]["content"], rejected[-1]["content"], "rejected")


def _transcript(row: _Row, spec: dict):
    chosen, rejected = row.text("chosen"), row.text("rejected")
    cut = {}
    for role, text in (("chosen", chosen), ("rejected", rejected)):
        at = text.rfind(ASSISTANT)
        if at < 0:
            raise row.error(role, f"no {ASSISTANT.strip()!r} turn in the transcript")
        cut[role] = at + len(ASSISTANT)
    prompt = chosen[: cut["chosen"]]
    if rejected[: cut["rejected"]] != prompt:
        raise row.error(
            "rejected",
            f"the transcript before the last {ASSISTANT.strip()!r} differs from chosen's",
        )
    return _pair(row, prompt, chosen[cut["chosen"] :], rejected[cut["rejected"] :], "rejected")


def _score(row: _Row, role: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise row.error(role, f"score {value!r} is not a finite number")
    return float(value)


def _ranked(row: _Row, spec: dict):
    prompt = row.text("prompt")
    items = row.value("responses")
    if not isinstance(items, list):
        raise row.error("responses", f"must be a list of responses, found {type(items).__name__}")
    if any(isinstance(it, dict) for it in items):
        keys = row.columns["text"], row.columns["score"]
        if not all(isinstance(it, dict) and keys[0] in it and keys[1] in it for it in items):
            raise row.error("responses", f"every response object must have the keys {keys}")
        texts = [it[keys[0]] for it in items]
        scores_role, raw_scores = "responses", [it[keys[1]] for it in items]
    else:
        texts, scores_role, raw_scores = items, "scores", row.value("scores")
        if not isinstance(raw_scores, list) or len(raw_scores) != len(texts):
            raise row.error("scores", f"must be a list of {len(texts)} scores, one per response")
    if len(texts) < 2:
        raise row.error("responses", f"has {len(texts)} response(s); a pair needs at least 2")
    if not all(isinstance(t, str) for t in texts):
        raise row.error("responses", "every response must be a string")
    if len(set(texts)) < len(texts):
        raise row.error("responses", "two responses are the same text")
    scores = [_score(row, scores_role, s) for s in raw_scores]
    best = max(scores)
    if scores.count(best) > 1:
        raise _Tie(
            row.error(scores_role, f"{scores.count(best)} responses share the highest score {best}")
        )
    preferred = scores.index(best)
    if spec.get("keep", "best_and_worst") == "all":
        kept = list(range(len(texts)))
    else:
        kept = sorted((preferred, scores.index(min(scores))))
    return (
        prompt,
        [texts[j] for j in kept],
        kept.index(preferred),
        {"scores": [scores[j] for j in kept]},
    )


CONVERTERS = {"pairs": _pairs, "messages": _messages, "transcript": _transcript, "ranked": _ranked}


def _is_metadata(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


def convert(
    rows: Iterable[dict], spec: dict, locate: Locate, where: str
) -> tuple[list[dict], list[int]]:
    """The GENIES records of `rows` (validated) and the indexes of the rows dropped as ties.

    `locate(i)` gives the file (or Hub split) and row of row `i` for errors and metadata;
    `where` names all of them (an error about the whole split, e.g. no examples).
    """
    columns = columns_of(spec)
    used = {
        columns[r] for r in ("prompt", "chosen", "rejected", "responses", "scores") if r in columns
    }
    converter = CONVERTERS[spec["layout"]]
    template = spec.get("prompt_template")
    records, origin, dropped = [], [], []
    for i, values in enumerate(rows):
        location, index = locate(i)
        try:
            prompt, texts, preferred, extra = converter(
                _Row(values, columns, location, index), spec
            )
        except _Tie as tie:
            if spec.get("ties", "error") != "drop":
                raise DataError(
                    tie.error.path,
                    f"{tie.error.message}; set `ties: drop` to leave such rows out",
                    record=tie.error.record,
                    field=tie.error.field,
                ) from None
            dropped.append(i)
            continue
        record = {k: v for k, v in values.items() if k not in used and _is_metadata(v)}
        record.update(extra, source_location=location, source_row=index)
        if template is not None:
            prompt = template.replace("{prompt}", prompt)
        record["prompt"] = prompt
        record["responses"] = {t: 1.0 if j == preferred else 0.0 for j, t in enumerate(texts)}
        records.append(record)
        origin.append(i)
    suffix = f" ({len(dropped)} rows dropped as ties)" if dropped else ""
    if not records:
        raise DataError(where, "contains no examples" + suffix)
    try:
        validate_examples(records, where)
    except DataError as exc:  # name the user's row and column, not the converted record
        if exc.record is None:
            raise
        location, index = locate(origin[exc.record])
        field = columns.get(exc.field) or columns.get("chosen")
        raise DataError(location, exc.message, record=index, field=field) from None
    return records, dropped
