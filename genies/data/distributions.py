"""Your own preference distributions (`distributions:` in the config), read with `datasets`.

An entry names its data: local files (`files`: split name -> a file or a list of files, each
.json, .jsonl, .parquet or .csv) or a Hugging Face Hub dataset (`hub`, `revision`, `subset`,
`data_dir`); the split each GENIES split reads (`splits`, in `datasets`' split syntax: `test`,
`train[:80%]`, `train[-200:]`); and the layout of its rows (`genies.data.layouts`).

Two steps, so that both splits read the same data:

- `pin_source` (rule pin_distribution, on the submit host, since it may download): a Hub
  revision is resolved to its commit and the dataset's files at that commit are downloaded into
  the Hugging Face cache (`HF_HOME`, `HF_TOKEN`, `HF_HUB_OFFLINE` apply as to any Hub download);
  local files are fingerprinted by sha256. The pin is results/data/<name>/source.json.
- `materialise_distribution` (rule materialise_distribution) loads a split of the pinned source
  with `datasets.load_dataset` (a Hub dataset from the cache's folder of the pinned commit,
  local files only if they still have their pinned sha256), converts and validates its rows
  (`genies.data.layouts.convert`) and writes results/data/<name>/<split>.parquet as a GENIES
  split is written (`genies.data.materialise.write_split`), the pin in its provenance.

`datasets` caches what it loaded from a local file under the file's path and modification time,
not its content, so every load here uses a fresh temporary cache: an edited file is read anew.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import tempfile
from pathlib import Path

from genies.data.layouts import LAYOUTS, convert, required_columns
from genies.data.materialise import LONG_EXAMPLE_CHARS, examples_table, write_split
from genies.errors import ConfigError, DataError
from genies.hub import explain_hub_error
from genies.io import RunRecord, write_json

log = logging.getLogger(__name__)

FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
# The keys of an entry that say where its data is: the pin depends on these only.
SOURCE_KEYS = ("files", "hub", "revision", "subset", "data_dir")
DEFAULT_REVISION = "main"
# Options that only some layouts read.
LAYOUT_OPTIONS = {"keep": "ranked", "multi_turn": "messages"}


def check_entry(name: str, spec: dict) -> None:
    """What the schema cannot say about a `distributions:` entry; ConfigError if wrong."""
    where = f"distributions: {name}"
    if ("files" in spec) == ("hub" in spec):
        raise ConfigError(
            f"{where}: name its data with exactly one of `files` (local files) and `hub` (a "
            "Hugging Face Hub dataset)"
        )
    for key in ("revision", "subset", "data_dir"):
        if key in spec and "hub" not in spec:
            raise ConfigError(f"{where}: `{key}` is for a Hub dataset (`hub`), not for files")
    layout = spec["layout"]
    unknown = sorted(set(spec.get("columns") or {}) - set(LAYOUTS[layout]))
    if unknown:
        raise ConfigError(
            f"{where}: `columns` names {unknown}, which layout {layout} does not read; its "
            f"columns are {', '.join(LAYOUTS[layout])}"
        )
    for option, only in LAYOUT_OPTIONS.items():
        if option in spec and layout != only:
            raise ConfigError(f"{where}: `{option}` is an option of layout {only}, not {layout}")
    for paths in local_files(spec).values():
        for path in paths:
            if Path(path).suffix.lower() not in FORMATS:
                raise ConfigError(f"{where}: {path} is not one of {', '.join(FORMATS)}")


def source_of(spec: dict) -> dict:
    """Where a distribution's data is: the part of its entry the pin depends on."""
    return {k: spec[k] for k in SOURCE_KEYS if k in spec}


def local_files(spec: dict) -> dict[str, list[str]]:
    """Split name -> the local files of an entry, as written in the config."""
    return {
        name: [paths] if isinstance(paths, str) else list(paths)
        for name, paths in (spec.get("files") or {}).items()
    }


def input_files(spec: dict) -> list[str]:
    """Every local file of an entry (the inputs of its pin), without repeats."""
    return list(dict.fromkeys(p for paths in local_files(spec).values() for p in paths))


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fingerprints(spec: dict) -> dict[str, str]:
    found = {}
    for path in input_files(spec):
        if not Path(path).is_file():
            raise DataError(path, "file not found (paths are relative to the working directory)")
        found[path] = file_sha256(path)
    return found


def pin_source(name: str, spec: dict, out_path) -> dict:
    """Fix what a distribution reads (a Hub commit, or local files' sha256) and write it."""
    run = RunRecord("pin_distribution", dataset=name)
    if "hub" in spec:
        revision = spec.get("revision", DEFAULT_REVISION)
        commit = hub_snapshot(spec["hub"], revision, spec.get("data_dir")).name
        log.info("%s: Hub dataset %s@%s is commit %s", name, spec["hub"], revision, commit)
        pin = {"origin": "hub", "location": spec["hub"], "revision": revision, "commit": commit}
    else:
        pin = {"origin": "files", "location": ", ".join(input_files(spec))}
        pin["sha256"] = _fingerprints(spec)
    pin = run.finish(**pin)
    write_json(pin, out_path)
    return pin


def hub_snapshot(repo: str, revision: str, data_dir: str | None = None) -> Path:
    """The cache folder of `revision` of the Hub dataset `repo` (downloaded if need be: all its
    files, or those under `data_dir`); its name is the commit. Offline (HF_HUB_OFFLINE=1), a
    commit or a branch the cache knows."""
    from huggingface_hub import snapshot_download

    where = f"Hugging Face dataset {repo}@{revision}"
    try:
        only = None if data_dir is None else [f"{data_dir.strip('/')}/*"]
        return Path(
            snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=only)
        )
    except Exception as exc:
        message = explain_hub_error(exc, repo, revision, "dataset")
        if message is None:
            raise
        raise DataError(where, message) from None


def materialise_distribution(
    name: str,
    spec: dict,
    split: str,
    pin_path,
    out_path,
    long_example_chars: int | None = LONG_EXAMPLE_CHARS,
) -> list[str]:
    """Load, convert and validate one GENIES split of a pinned distribution and write it as
    Parquet; return the warnings (rows dropped as ties, data defects)."""
    pin = json.loads(Path(pin_path).read_text())
    run = RunRecord("materialise", dataset=name, split=split, params=spec)
    with tempfile.TemporaryDirectory(prefix="genies-datasets-") as cache:
        sources = load_sources(spec, pin, cache)
        table, read = split_examples(name, spec, split, sources, pin)
        train = split_examples(name, spec, "train", sources, pin)[0] if split == "test" else None
    dropped = read["rows"] - table.num_rows
    warnings = []
    if dropped:
        warnings.append(f"{dropped} of {read['rows']} rows dropped as ties (`ties: drop`)")
    provenance = {k: pin[k] for k in ("origin", "location", "revision", "commit") if k in pin}
    write_split(
        table,
        out_path,
        run,
        train_table=train,
        long_example_chars=long_example_chars,
        warnings=warnings,
        **provenance,
        **read,
        dropped_rows=dropped,
    )
    return warnings


def split_examples(name: str, spec: dict, split: str, sources: dict, pin: dict):
    """(examples table, what was read) of a GENIES split of a pinned distribution, from its
    `load_sources`."""
    import datasets

    selection = spec.get("splits", {}).get(split, split)
    describe = f"distribution {name!r}, {split} split ({selection!r})"
    try:
        instructions = datasets.ReadInstruction.from_spec(selection).to_absolute(
            {s: sum(len(d) for _, d in parts) for s, parts in sources.items()}
        )
    except (ValueError, AssertionError) as exc:
        raise DataError(
            describe, f"{exc}; the source has the splits {sorted(sources)} (set `splits`)"
        ) from None
    parts = [part for ins in instructions for part in _slice(sources[ins.splitname], ins)]
    for where, _, rows in parts:
        missing = [c for c in required_columns(spec) if c not in rows.column_names]
        if missing:
            raise DataError(
                where,
                f"has no column {missing[0]!r} (its columns: {', '.join(rows.column_names)}); "
                "name the right one in `columns`",
                field=missing[0],
            )
    starts, total = [], 0
    for _, _, rows in parts:
        starts.append(total)
        total += len(rows)

    def locate(i: int) -> tuple[str, int]:
        k = bisect.bisect_right(starts, i) - 1
        where, first, _ = parts[k]
        return where, first + i - starts[k]

    rows = (row for _, _, part in parts for row in _rows(part))
    records, _ = convert(rows, spec, locate, describe)
    files = list(dict.fromkeys(where for where, _, _ in parts)) if "files" in spec else []
    read = {"rows": total, "split_read": selection}
    if files:
        read["files"] = [{"path": p, "sha256": pin["sha256"][p]} for p in files]
    return examples_table(name, split, records), read


def _rows(dataset):
    """The rows of a `datasets.Dataset` as dicts, decoded by its features (a column of mixed
    JSON types keeps each value's own type), a batch at a time: several times faster than
    its row-by-row iteration."""
    for batch in dataset.iter(batch_size=1024):
        names = list(batch)
        for values in zip(*batch.values(), strict=True):
            yield dict(zip(names, values, strict=True))


def _slice(files: list, instruction) -> list[tuple[str, int, object]]:
    """(where, first row there, rows) of the rows [from_, to) of a split held in `files`."""
    out, offset = [], 0
    for where, rows in files:
        lo = max(instruction.from_, offset) - offset
        hi = min(instruction.to, offset + len(rows)) - offset
        if lo < hi:
            out.append((where, lo, rows.select(range(lo, hi))))
        offset += len(rows)
    return out


def load_sources(spec: dict, pin: dict, cache_dir) -> dict[str, list]:
    """Split name -> [(where, datasets.Dataset)] of a pinned distribution: one entry per local
    file, or the Hub split, loaded with a `datasets` cache in `cache_dir`."""
    import datasets

    datasets.disable_progress_bars()  # a bar per file would fill the job's log
    if "hub" in spec:
        folder = hub_snapshot(spec["hub"], pin["commit"], spec.get("data_dir"))
        where = f"{spec['hub']}@{pin['commit'][:12]}"
        try:
            loaded = datasets.load_dataset(
                str(folder), spec.get("subset"), data_dir=spec.get("data_dir"), cache_dir=cache_dir
            )
        except (ValueError, datasets.exceptions.DatasetGenerationError) as exc:
            raise DataError(where, f"datasets could not load it: {exc}") from None
        return {s: [(f"{where} split {s}", rows)] for s, rows in loaded.items()}
    for path, sha256 in _fingerprints(spec).items():
        if sha256 != pin["sha256"].get(path):
            raise DataError(
                path,
                "changed since its distribution was pinned (another sha256); run the workflow "
                "again: the pin_distribution job reruns and everything that read it",
            )
    return {
        name: [(path, _load_file(path, cache_dir)) for path in paths]
        for name, paths in local_files(spec).items()
    }


def _load_file(path: str, cache_dir):
    import datasets

    builder = FORMATS[Path(path).suffix.lower()]  # checked with the config (check_entry)
    try:
        return datasets.load_dataset(
            builder,
            data_files={"rows": str(Path(path).resolve())},
            split="rows",
            cache_dir=cache_dir,
        )
    except datasets.exceptions.DatasetGenerationError as exc:
        cause = exc.__cause__ or exc
        raise DataError(path, f"datasets could not read it as {builder}: {cause}") from None
