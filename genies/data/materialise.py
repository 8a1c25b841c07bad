"""Validate GENIES example files and materialise them as Parquet.

One row per example: a stable `example_id` (`<dataset>/<split>/<index>`), the prompt, the
responses in file order, the index of the preferred response, the evaluation pair expansion
(`dispreferred`: the other responses in file order; evaluation pair `i` is preferred vs
`dispreferred[i]`), a content fingerprint and the remaining record fields as JSON metadata.
`prompt_format` is dropped: upstream's value does not describe the prompts reliably.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from genies.data.raw import RawData, split_path
from genies.errors import DataError
from genies.io import RunRecord, read_provenance, write_parquet

log = logging.getLogger(__name__)

DROPPED_FIELDS = {"prompt", "responses", "prompt_format"}
# Examples longer than this (prompt + longest response, characters) are warned about; the
# config key `long_example_chars` overrides it.
LONG_EXAMPLE_CHARS = 20_000

EXAMPLE_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("example_index", pa.int32()),
        ("prompt", pa.string()),
        ("responses", pa.list_(pa.string())),
        ("preferred", pa.int8()),
        ("dispreferred", pa.list_(pa.int8())),
        ("n_responses", pa.int8()),
        ("fingerprint", pa.string()),
        ("metadata", pa.string()),
    ]
)


def _is_score(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def validate_examples(records, where: str) -> list[dict]:
    """Check GENIES records and return them normalised; raise DataError naming file/record/field."""
    if not isinstance(records, list):
        raise DataError(where, f"expected a JSON array of examples, found {type(records).__name__}")
    if not records:
        raise DataError(where, "contains no examples")
    expected_k = None
    examples = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(where, f"expected an object, found {type(rec).__name__}", record=i)
        for field in ("prompt", "responses"):
            if field not in rec:
                raise DataError(where, "required field is missing", record=i, field=field)
        if not isinstance(rec["prompt"], str):
            raise DataError(where, "must be a string", record=i, field="prompt")
        responses = rec["responses"]
        if not isinstance(responses, dict):
            raise DataError(
                where,
                f"must be an object mapping response texts to scores, found "
                f"{type(responses).__name__}",
                record=i,
                field="responses",
            )
        if len(responses) < 2:
            raise DataError(
                where,
                f"has {len(responses)} response(s); a pair needs at least 2",
                record=i,
                field="responses",
            )
        for text, score in responses.items():
            if not _is_score(score):
                raise DataError(
                    where,
                    f"score of response {text[:40]!r} is {score!r}, not a number",
                    record=i,
                    field="responses",
                )
        scores = list(responses.values())
        # Scores are checked for their values first: with only 1.0 and 0.0 left, exactly one
        # 1.0 among at least two responses implies a 0.0, so no separate check is needed.
        others = [s for s in scores if s not in (0, 1)]
        if others:
            raise DataError(
                where,
                f"scores must be 1.0 (preferred) or 0.0 (dispreferred), found {others[0]!r}",
                record=i,
                field="responses",
            )
        n_best = sum(s == 1 for s in scores)
        if n_best != 1:
            raise DataError(
                where,
                f"exactly one response must score 1.0, found {n_best}",
                record=i,
                field="responses",
            )
        if expected_k is None:
            expected_k = len(responses)
        elif len(responses) != expected_k:
            raise DataError(
                where,
                f"has {len(responses)} responses but record 0 has {expected_k}; "
                "all examples of a file must have the same number",
                record=i,
                field="responses",
            )
        examples.append(rec)
    return examples


def fingerprint(prompt: str, responses: list[str], preferred: int) -> str:
    """Identity of an example's content, independent of response order."""
    scored = sorted((text, j == preferred) for j, text in enumerate(responses))
    payload = json.dumps([prompt, scored], ensure_ascii=False).encode()
    return hashlib.sha1(payload).hexdigest()


def examples_table(dataset: str, split: str, records: list[dict]) -> pa.Table:
    rows = {name: [] for name in EXAMPLE_SCHEMA.names}
    for i, rec in enumerate(records):
        texts = list(rec["responses"])
        scores = list(rec["responses"].values())
        best = next(j for j, s in enumerate(scores) if s == 1)
        rows["example_id"].append(f"{dataset}/{split}/{i:05d}")
        rows["example_index"].append(i)
        rows["prompt"].append(rec["prompt"])
        rows["responses"].append(texts)
        rows["preferred"].append(best)
        rows["dispreferred"].append([j for j in range(len(texts)) if j != best])
        rows["n_responses"].append(len(texts))
        rows["fingerprint"].append(fingerprint(rec["prompt"], texts, best))
        extra = {k: v for k, v in rec.items() if k not in DROPPED_FIELDS}
        rows["metadata"].append(json.dumps(extra, ensure_ascii=False, sort_keys=True))
    return pa.table(rows, schema=EXAMPLE_SCHEMA)


def defect_warnings(
    table: pa.Table,
    train_table: pa.Table | None = None,
    long_example_chars: int | None = LONG_EXAMPLE_CHARS,
) -> list[str]:
    """Known GENIES data defects (docs/fidelity.md), as human-readable warnings.

    Also examples whose prompt plus longest response exceed `long_example_chars` characters
    (None: no check): they may not fit a model's context (`genies.models.context`).
    """
    warnings = []
    n = table.num_rows
    prompts = Counter(table.column("prompt").to_pylist())
    if n > 1 and len(prompts) == 1:
        warnings.append(f"all {n} prompts are the same string")
    elif len(prompts) < n:
        shared = sum(c for c in prompts.values() if c > 1)
        warnings.append(f"{shared} of {n} examples share their prompt with another example")
    prints = Counter(table.column("fingerprint").to_pylist())
    dups = sum(c - 1 for c in prints.values() if c > 1)
    if dups:
        warnings.append(f"{dups} duplicate examples (identical prompt and responses)")
    if train_table is not None:
        train_prints = set(train_table.column("fingerprint").to_pylist())
        leaked = sum(1 for f in table.column("fingerprint").to_pylist() if f in train_prints)
        if leaked:
            warnings.append(f"{leaked} examples also appear in train (train/test overlap)")
    if long_example_chars is not None:
        warnings += _long_example_warnings(table, long_example_chars)
    return warnings


def _long_example_warnings(table: pa.Table, limit: int) -> list[str]:
    cols = table.select(["example_id", "prompt", "responses"]).to_pydict()
    lengths = [
        len(p) + max(map(len, rs), default=0)
        for p, rs in zip(cols["prompt"], cols["responses"], strict=True)
    ]
    long = [i for i, n in enumerate(lengths) if n > limit]
    if not long:
        return []
    worst = max(long, key=lengths.__getitem__)
    return [
        f"{len(long)} examples are longer than {limit} characters (prompt + longest response; "
        f"the longest, {cols['example_id'][worst]}, has {lengths[worst]}): a model whose "
        f"context they exceed cuts their prompts or skips them (context_policy)"
    ]


def load_split(raw: RawData, dataset: str, split: str) -> pa.Table:
    rel = split_path(dataset, split)
    records = validate_examples(raw.read_json(rel), raw.display(rel))
    return examples_table(dataset, split, records)


def materialise(
    raw_location,
    dataset: str,
    split: str,
    out_path,
    long_example_chars: int | None = LONG_EXAMPLE_CHARS,
) -> list[str]:
    """Validate one split and write it as Parquet; return the data-defect warnings."""
    run = RunRecord("materialise", dataset=dataset, split=split)
    raw = RawData(raw_location)
    table = load_split(raw, dataset, split)
    train = load_split(raw, dataset, "train") if split == "test" else None
    return write_split(
        table,
        out_path,
        run,
        train_table=train,
        long_example_chars=long_example_chars,
        origin="genies",
        location=str(raw_location),
    )


def write_split(
    table: pa.Table,
    out_path,
    run: RunRecord,
    *,
    train_table: pa.Table | None = None,
    long_example_chars: int | None = LONG_EXAMPLE_CHARS,
    warnings=(),
    **provenance,
) -> list[str]:
    """Write a materialised split with its provenance: `warnings` and the data defects
    (`defect_warnings`, against `train_table` for a test split), each logged; return them."""
    warnings = [*warnings, *defect_warnings(table, train_table, long_example_chars)]
    dataset, split = run.fields["dataset"], run.fields["split"]
    for w in warnings:
        log.warning("data defect in %s/%s: %s", dataset, split, w)
    metadata = run.finish(n_examples=table.num_rows, warnings=warnings, **provenance)
    write_parquet(table, out_path, metadata)
    return warnings


def read_examples(path, limit: int | None = None) -> pa.Table:
    """Read a materialised split, keeping the first `limit` examples (None = all)."""
    table = pq.read_table(path)
    return table if limit is None else table.slice(0, limit)


def split_of(path) -> tuple[str, str]:
    """(dataset, split) of a materialised file: from its provenance, else from its path
    (`results/data/<dataset>/<split>.parquet`)."""
    prov = read_provenance(path)
    return prov.get("dataset", Path(path).parent.name), prov.get("split", Path(path).stem)
