"""The distribution-shift registry.

A shift is (source, target) with a `target_reference` (the dataset whose in-distribution
accuracy is the target-tuned capability; defaults to the target), a `label` (extreme or
probing) and a `category`. `all.json` carries no labels: they are recovered from the
`extreme/*.json` and `probing/*.json` category files that list the pair. Duplicate
(source, target) entries are dropped with a printed note (`all.json` repeats 13 shifts).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pyarrow as pa

from .errors import ConfigError, DataError
from .raw import RawData

log = logging.getLogger(__name__)

NAMED_SETS = {
    "genies": "GENIES.json",
    "all": "all.json",
    "extreme": "extreme/all.json",
    "probing": "probing/all.json",
}
LABELS = ("extreme", "probing")


@dataclasses.dataclass(frozen=True)
class Shift:
    source: str
    target: str
    target_reference: str
    label: str | None = None
    category: str | None = None

    @property
    def shift_id(self) -> str:
        return f"{self.source}__{self.target}"


def _read_entries(raw: RawData | None, path: Path | None, rel: str | None):
    if path is not None:
        where = str(path)
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise DataError(where, "shift file not found") from None
        except json.JSONDecodeError as exc:
            raise DataError(
                where, f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            ) from None
    else:
        where = raw.display(rel)
        data = raw.read_json(rel)
    if not isinstance(data, list):
        raise DataError(where, f"expected a JSON array of shifts, found {type(data).__name__}")
    return where, data


def _parse(where: str, data: list) -> list[Shift]:
    shifts = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DataError(where, "expected an object", record=i)
        for field in ("source", "target"):
            if not isinstance(entry.get(field), str) or not entry.get(field):
                raise DataError(where, "required string field is missing", record=i, field=field)
        label = entry.get("label")
        if label is not None and label not in LABELS:
            raise DataError(
                where, f"must be one of {LABELS}, got {label!r}", record=i, field="label"
            )
        shifts.append(
            Shift(
                source=entry["source"],
                target=entry["target"],
                target_reference=entry.get("target_reference") or entry["target"],
                label=label,
                category=entry.get("category"),
            )
        )
    return shifts


def _category_index(raw: RawData) -> dict[tuple[str, str], tuple[str, str]]:
    """(source, target) -> (label, category) from the extreme/ and probing/ sub-files."""
    index = {}
    for label in LABELS:
        prefix = f"distribution_shifts/{label}/"
        if raw.is_archive:
            rels = [r for r in raw._members if r.startswith(prefix)]
        else:
            base = raw.location / prefix
            rels = [prefix + p.name for p in base.glob("*.json")] if base.is_dir() else []
        for rel in sorted(rels):
            category = Path(rel).stem
            if category == "all":
                continue
            where, data = _read_entries(raw, None, rel)
            for s in _parse(where, data):
                index.setdefault((s.source, s.target), (label, category))
    return index


def load_shifts(selection: str, data_location, known_datasets=None) -> list[Shift]:
    """Load a named shift set (genies, all, extreme, probing) or a user's shift file.

    Unknown datasets (not in `known_datasets`) are an error naming the file, record and field.
    """
    raw = RawData(data_location)
    if selection in NAMED_SETS:
        rel = f"distribution_shifts/{NAMED_SETS[selection]}"
        if not raw.exists(rel):
            raise ConfigError(
                f"shift set {selection!r} needs {raw.display(rel)}, which does not exist"
            )
        where, data = _read_entries(raw, None, rel)
    elif selection.endswith(".json"):
        where, data = _read_entries(None, Path(selection), None)
    else:
        raise ConfigError(
            f"unknown shift set {selection!r}: use one of {sorted(NAMED_SETS)} "
            "or the path of a .json shift file"
        )
    shifts = _parse(where, data)
    if known_datasets is not None:
        known = set(known_datasets)
        for i, s in enumerate(shifts):
            for field in ("source", "target", "target_reference"):
                name = getattr(s, field)
                if name not in known:
                    raise DataError(where, f"unknown dataset {name!r}", record=i, field=field)
    categories = _category_index(raw)
    unique, seen = [], {}
    for i, s in enumerate(shifts):
        key = (s.source, s.target)
        if key in seen:
            log.warning(
                "note: %s entry %d repeats shift %s -> %s (entry %d); it is counted once",
                where,
                i,
                s.source,
                s.target,
                seen[key],
            )
            continue
        seen[key] = i
        if s.label is None and key in categories:
            s = dataclasses.replace(s, label=categories[key][0], category=categories[key][1])
        unique.append(s)
    return unique


def shifts_table(shifts: list[Shift], genies_pairs=()) -> pa.Table:
    genies_pairs = set(genies_pairs)
    return pa.table(
        {
            "shift_id": [s.shift_id for s in shifts],
            "source": [s.source for s in shifts],
            "target": [s.target for s in shifts],
            "target_reference": [s.target_reference for s in shifts],
            "label": [s.label for s in shifts],
            "category": [s.category for s in shifts],
            "in_genies": [(s.source, s.target) in genies_pairs for s in shifts],
        }
    )


def datasets_of(shifts: list[Shift]) -> list[str]:
    names = set()
    for s in shifts:
        names.update((s.source, s.target, s.target_reference))
    return sorted(names)
