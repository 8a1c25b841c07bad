"""The distribution-shift registry.

A shift is (source, target) with a `target_reference` (the dataset whose in-distribution
accuracy is the target-tuned capability; defaults to the target), a `label` (extreme or
probing) and a `category`. `all.json` carries no labels: they are recovered from the
`extreme/*.json` and `probing/*.json` category files that list the pair. Duplicate
(source, target) entries are dropped with a printed note (`all.json` repeats 13 shifts).

The registry table (`shifts_table`, results/shifts.parquet) lists every shift the workflow
knows: the configured ones first, in their order, then the other shifts of GENIES.json and of
all.json. Besides `configured` it flags the sets whose averages the GENIES table reports, as the
paper defines its columns (`SET_FLAGS`):

- `in_genies`: listed in GENIES.json (15 shifts): avg DE, capable DE, calibration, ID target
  accuracy.
- `in_extreme_set` / `in_probing_set`: listed in extreme/all.json (37 shifts) / probing/all.json
  (32 entries, 19 distinct (source, target) pairs, each counted once). Membership comes from these
  category files, not from a label: GENIES.json labels alpaca_short -> alpaca_long `extreme`,
  but probing/all.json lists it, so it counts towards the probing average.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pyarrow as pa

from genies.data.raw import RawData
from genies.errors import ConfigError, DataError
from genies.io import read_json

log = logging.getLogger(__name__)

NAMED_SETS = {
    "genies": "GENIES.json",
    "all": "all.json",
    "extreme": "extreme/all.json",
    "probing": "probing/all.json",
}
LABELS = ("extreme", "probing")
#: Shift set -> the registry column that marks its members (the GENIES table averages over it).
SET_FLAGS = {"genies": "in_genies", "extreme": "in_extreme_set", "probing": "in_probing_set"}
REGISTRY_SCHEMA = pa.schema(
    [
        ("shift_index", pa.int32()),
        ("shift_id", pa.string()),
        ("source", pa.string()),
        ("target", pa.string()),
        ("target_reference", pa.string()),
        ("label", pa.string()),
        ("category", pa.string()),
        ("configured", pa.bool_()),
        *((flag, pa.bool_()) for flag in SET_FLAGS.values()),
    ]
)


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
        if not Path(path).is_file():
            raise DataError(where, "shift file not found")
        data = read_json(path)
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


def load_shifts(
    selection: str, data_location, known_datasets=None, *, note_repeats=logging.WARNING
) -> list[Shift]:
    """Load a named shift set (genies, all, extreme, probing) or a user's shift file.

    Unknown datasets (not in `known_datasets`) are an error naming the file, record and field.
    A repeated (source, target) entry is dropped with a note logged at level `note_repeats`.
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
            log.log(
                note_repeats,
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


def shift_sets(data_location) -> dict[str, list[Shift]]:
    """The named shift sets the GENIES table averages over, plus `all` (every other known shift).

    genies (GENIES.json), extreme and probing (extreme/all.json, probing/all.json), all
    (all.json), each without repeated (source, target) pairs. A set whose file the data folder
    lacks is empty (its columns then say that no shift of it was covered).
    """
    sets = {}
    for name in (*SET_FLAGS, "all"):
        try:
            sets[name] = load_shifts(name, data_location, note_repeats=logging.DEBUG)
        except ConfigError:
            sets[name] = []
    return sets


def shifts_table(configured: list[Shift], sets: dict[str, list[Shift]] | None = None) -> pa.Table:
    """The shift registry (REGISTRY_SCHEMA): configured shifts, then the others of `sets`.

    `shift_index` is the row number. A configured shift keeps its own target reference and
    label; the membership flags come from `sets` (`shift_sets`) by (source, target) only.
    """
    sets = sets or {}
    members = {
        flag: {(s.source, s.target) for s in sets.get(name, ())} for name, flag in SET_FLAGS.items()
    }
    known: dict[str, tuple[Shift, bool]] = {}
    for shift in configured:
        known.setdefault(shift.shift_id, (shift, True))
    for name in ("genies", "all", "extreme", "probing"):
        for shift in sets.get(name, ()):
            known.setdefault(shift.shift_id, (shift, False))
    rows = []
    for index, (shift, is_configured) in enumerate(known.values()):
        row = {"shift_index": index, "shift_id": shift.shift_id, **dataclasses.asdict(shift)}
        row["configured"] = is_configured
        for flag, pairs in members.items():
            row[flag] = (shift.source, shift.target) in pairs
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=REGISTRY_SCHEMA)


def configured_rows(table: pa.Table) -> pa.Table:
    """The rows of a registry table whose shifts the config selects (the cells' shifts)."""
    return table.filter(table.column("configured"))


def datasets_of(shifts: list[Shift]) -> list[str]:
    names = set()
    for s in shifts:
        names.update((s.source, s.target, s.target_reference))
    return sorted(names)
