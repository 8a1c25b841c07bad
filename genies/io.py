"""Atomic file output, checked JSON and Parquet input, and run provenance.

Every artefact is written to a temporary sibling and renamed into place, so a reader (or
Snakemake after a crash) never sees a half-written file. Provenance (parameters, package
versions, git commit, wall time, device) travels inside each Parquet file's schema metadata,
so the aggregation can rebuild the `runs` table from the result files alone.

Files are read through one reader per kind, whose errors name the file: `parse_json` /
`read_json` (UTF-8, not empty, no key twice in one object: JSON would keep only the last, so
two responses with the same text would silently become one) and `read_parquet` (a file that
is not Parquet, or is truncated, names itself and how to rebuild it).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from genies.errors import CorruptFileError, DataError

PROVENANCE_KEY = b"genies.provenance"
MODEL_INFO_FILE = "genies_model.json"  # how a prepared model directory was made
# Every package whose version can change a number this workflow writes: kernels and model code,
# the tokens, device placement, the weights read and converted, the arrays of the statistics.
TRACKED_PACKAGES = (
    "genies",
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "peft",
    "bitsandbytes",
    "safetensors",
    "gguf",
    "numpy",
    "pyarrow",
    "duckdb",
)


@contextlib.contextmanager
def atomic_dir(out_dir):
    """Yield an empty temporary sibling of `out_dir`; move it onto `out_dir` only on success."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    remove_path(tmp)
    remove_path(old)
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists() or out_dir.is_symlink():
            os.replace(out_dir, old)  # only now, when the new directory is complete
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(old, out_dir)
                raise
            remove_path(old)
        else:
            os.replace(tmp, out_dir)
    finally:
        remove_path(tmp)


def link_or_copy(src, dst) -> None:
    """Hard-link `src` to `dst` (no second copy of large weights), or copy across devices."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def remove_path(path) -> None:
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


@contextlib.contextmanager
def atomic_path(path, scratch=None):
    """Yield a temporary path next to `path`; rename it onto `path` only on success.

    With a `scratch` folder (`genies.scratch.choose_scratch`), the temporary file is written
    there and copied next to `path` only when complete: large files written piecemeal
    (memory-mapped activations) then never stream to shared storage.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    work = Path(scratch) / f"genies-{os.getpid()}-{path.name}" if scratch else tmp
    try:
        yield work
        if work != tmp:
            shutil.copyfile(work, tmp)
        os.replace(tmp, path)
    finally:
        for leftover in {tmp, work}:
            if leftover.exists():
                leftover.unlink()


def write_parquet(table: pa.Table, path, metadata: dict | None = None) -> None:
    """Write `table` atomically; `metadata` (JSON-serialisable) goes into the schema metadata."""
    if metadata is not None:
        existing = dict(table.schema.metadata or {})
        existing[PROVENANCE_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(existing)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path, columns=None, filters=None, rule: str | None = None) -> pa.Table:
    """`pq.read_table` of a file the workflow wrote; a missing, truncated or corrupt file raises
    CorruptFileError naming it and how to rebuild it (`rule`: the rule that writes it)."""
    try:
        return pq.read_table(path, columns=columns, filters=filters)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, exc, rule) from None


def read_parquet_schema(path, rule: str | None = None) -> pa.Schema:
    """The schema of a Parquet file the workflow wrote (its footer only), with `read_parquet`'s
    errors."""
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, exc, rule) from None


def read_provenance(path) -> dict:
    """Return the provenance dict stored by `write_parquet`, or {} if there is none."""
    meta = read_parquet_schema(path).metadata or {}
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


def _unreadable(path, exc: Exception, rule: str | None) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(f"{path}: no such file")
    return CorruptFileError(path, f"not a readable Parquet file ({exc})", rule)


class _Repeated(dict):
    """A JSON object in which `key` appeared more than once."""

    key: str


def _object(pairs, repeats: list):
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set = set()
        obj = _Repeated(obj)
        obj.key = next(k for k, _ in pairs if k in seen or seen.add(k))
        repeats.append(obj)
    return obj


def _first_repeated(value, path=()):
    """(path, key) of the outermost object with a repeated key, or None."""
    if isinstance(value, _Repeated):
        return path, value.key
    children = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ()
    )  # fmt: skip
    for name, child in children:
        if isinstance(child, dict | list):
            found = _first_repeated(child, (*path, name))
            if found:
                return found
    return None


def parse_json(data: bytes, where, rule: str | None = None):
    """The JSON value of a file's bytes: UTF-8 (a BOM is allowed), not empty, no key twice in
    one object. Raises DataError naming `where`, and for a repeated key its record (the index
    in a top-level array) and field; with `rule` (a file the workflow wrote), CorruptFileError
    with how to rebuild it."""
    try:
        return _parse_json(data, where)
    except DataError as exc:
        if rule is None:
            raise
        raise CorruptFileError(where, str(exc).removeprefix(f"{where}: "), rule) from None


def _parse_json(data: bytes, where):
    if not data.strip():
        raise DataError(where, f"the file is empty ({len(data)} bytes); expected JSON")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            where, f"not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    repeats: list = []
    try:
        value = json.loads(text, object_pairs_hook=lambda pairs: _object(pairs, repeats))
    except json.JSONDecodeError as exc:
        raise DataError(
            where, f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    if repeats:
        path, key = _first_repeated(value)
        record = path[0] if isinstance(value, list) and path else None
        inner = path[1:] if record is not None else path
        field = "/".join(map(str, inner)) if inner else key
        raise DataError(
            where,
            f"key {key!r} appears twice in one object (JSON would keep only the last); "
            "remove or rename one",
            record=record,
            field=field,
        )
    return value


def read_json(path, rule: str | None = None):
    """`parse_json` of the file at `path`; a file that cannot be read is a DataError too."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot be read ({exc.strerror or exc})") from None
    return parse_json(data, path, rule)


def read_model_info(model_dir) -> dict:
    """The `genies_model.json` of a prepared model directory ({} for a plain HF one): its
    registry entry (`spec`) and what its preparation found (`description`)."""
    info = Path(model_dir) / MODEL_INFO_FILE
    return read_json(info) if info.is_file() else {}


def models_of(*paths) -> dict:
    """The `models` provenance of the Parquet files a job reads: every prepared model (registry
    name -> source, Hub repository and commit, ...) that those files, and so the job's output,
    derive from. A job that loads a model records it itself (`RunRecord(..., models=...)`)."""
    models = {}
    for path in paths:
        models.update(read_provenance(path).get("models", {}))
    return models


def write_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def package_versions(names=TRACKED_PACKAGES) -> dict:
    """Installed version of each package in `names` (None when it is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo_dir=None) -> str | None:
    """The commit of the workflow checkout (with '-dirty' if modified), or None outside git."""
    repo_dir = repo_dir or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo_dir), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class RunRecord:
    """Collects provenance for one job; `finish()` returns the dict to store with its output.

    A job whose output derives from a model passes `models`: registry name -> where the prepared
    model came from (`genies.models.loading.model_run` makes the record of a job that loads the
    model; `models_of` reads it from a job's inputs), so every run names the Hub commit its
    numbers come from.
    """

    def __init__(self, job: str, **fields):
        self.start = time.time()
        self.fields = {"job": job, **fields}

    def finish(self, **extra) -> dict:
        return {
            **self.fields,
            **extra,
            "seconds": round(time.time() - self.start, 3),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.start)),
            "host": platform.node(),
            "packages": package_versions(),
            "git_commit": git_commit(),
        }
