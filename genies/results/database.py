"""results/results.duckdb as users treat it: always there, always whole, never taken from them.

The aggregation writes the workflow's own database, `results/database/results.duckdb`
(`genies.pipeline.plan.BUILT_DATABASE`, the output of rule aggregate), and the jobs that read a
database (report_tables, viewer) read that file. Snakemake deletes it before rebuilding it and
after a failed rebuild; nobody else opens it. Users open `results/results.duckdb`
(`genies.pipeline.plan.DATABASE`), a copy that rule publish_database swaps in (`publish`) once a
new database is complete:

- the copy is written beside the old file and renamed over it, so a reader always finds a whole
  database, the old one or the new one (and a reader that has the old one open keeps it);
- Snakemake never deletes it (the rule flags it `update`): not while the next one is built, not
  after a failed build;
- the old file is kept in `results/database/previous/` when it is not exactly the copy the
  workflow put there (its inode, size and SHA-256 are recorded in
  `results/database/published.json`; not its mtime, which Snakemake touches after the job):
  someone opened it read-write and wrote to it (a table of their own), a process that had it
  open read-write died and left its write-ahead log (`results.duckdb.wal`, which moves along, so
  that DuckDB replays it when the kept copy is opened), or the file is damaged. The warning names
  the kept file. The old file is never opened, so a damaged one cannot block a rebuild;
- while a process has it open read-write, it is not replaced: DuckDB would later write that
  process's log beside the new file, which then would not open ("WAL does not match database
  file"). The aggregation refuses to start (`require_not_held`); publish_database leaves the old
  one with a warning and replaces it on the next run.

Since the jobs read their own file, nothing done to results/results.duckdb (writes, a lock, a
stale log) can fail them. A log left beside the workflow's own file is removed when that file is
rebuilt, and `connect` names it when a job cannot open the file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import duckdb

from genies.errors import GeniesError
from genies.io import atomic_path, link_or_copy, write_json

log = logging.getLogger(__name__)

REBUILD = "snakemake --cores all --forcerun aggregate genies_table"
READ_ONLY = "duckdb.connect('results/results.duckdb', read_only=True)"


class DatabaseError(GeniesError):
    """A database cannot be opened, or cannot be replaced now."""


def wal_of(path) -> Path:
    """DuckDB's write-ahead log of the database at `path` (beside it, named after it)."""
    path = Path(path)
    return path.with_name(path.name + ".wal")


def held_read_write(path) -> bool:
    """Whether another process has the DuckDB database at `path` open read-write (DuckDB holds
    a write lock on the file then; a read-only connection holds a shared one)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return True
        raise
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _held_message(path) -> str:
    return (
        f"{path} is open read-write in another process (DuckDB holds its write lock). Close "
        f"that connection and run snakemake again; open it read-only ({READ_ONLY}) and keep "
        "your own tables in a database of your own (README, Results)"
    )


def require_not_held(path) -> None:
    """Refuse to start an aggregation that could not replace the database at `path`."""
    if held_read_write(path):
        raise DatabaseError(_held_message(path) + ": the aggregation would replace it under you")


def connect(path, rebuild: str = REBUILD) -> duckdb.DuckDBPyConnection:
    """Open a database read-only; a file that does not open is named with what to do."""
    path = Path(path)
    if not path.is_file():
        raise DatabaseError(f"{path} does not exist; build it with: {rebuild}")
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        wal = wal_of(path)
        if wal.exists():
            hint = (
                f"{wal} is the write-ahead log of a process that had it open read-write and "
                "did not close it. Delete that file (its unsaved changes are lost) or rebuild"
            )
        else:
            hint = "It is damaged or not a DuckDB database: rebuild it"
        raise DatabaseError(f"cannot open {path}: {exc}\n{hint}: {rebuild}") from None


def check_readable(path) -> None:
    """Raise DatabaseError unless `path` opens read-only and its tables can be read."""
    con = connect(path)
    try:
        con.execute("SELECT count(*) FROM cells").fetchone()
    except duckdb.Error as exc:
        raise DatabaseError(f"cannot read {path}: {exc}\nrebuild it: {REBUILD}") from None
    finally:
        con.close()


def manifest_of(built) -> Path:
    """Where the copy last published from `built` is recorded."""
    return Path(built).parent / "published.json"


def kept_dir_of(built) -> Path:
    """Where a published copy that was changed after publication is kept."""
    return Path(built).parent / "previous"


def publish(built, public) -> Path | None:
    """Swap a copy of the database `built` in at `public` (see the module docstring).

    Returns where the previous file was kept, or None (it was the workflow's own copy, or
    there was none). Leaves `public` as it is, with a warning, while another process has it
    open read-write.
    """
    built, public = Path(built), Path(public)
    check_readable(built)
    if held_read_write(public):
        log.warning(
            "%s; it was not replaced and still holds the previous results", _held_message(public)
        )
        return None
    with atomic_path(public) as tmp:
        shutil.copyfile(built, tmp)
        kept = _keep_previous(public, built)
    write_json({"path": str(public), **_identity(public)}, manifest_of(built))
    log.info("published %s as %s", built, public)
    return kept


def _changed(public: Path, built: Path) -> str | None:
    """Why `public` is not the copy last published from `built`, or None."""
    if wal_of(public).exists():
        return (
            f"a process that opened it read-write did not close it and left {wal_of(public)} "
            "(its unsaved changes)"
        )
    try:
        record = json.loads(manifest_of(built).read_text())
    except (OSError, ValueError):
        return "the workflow has no record of publishing it"
    stat = public.stat()
    if (record.get("inode"), record.get("size")) == (stat.st_ino, stat.st_size):
        if record.get("sha256") == _identity(public)["sha256"]:
            return None
    return "it was written to since it was published (opened read-write?) or is damaged"


def _identity(path: Path) -> dict:
    """What tells the published copy from anything written to it later."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    stat = path.stat()
    return {"inode": stat.st_ino, "size": stat.st_size, "sha256": digest.hexdigest()}


def _keep_previous(public: Path, built: Path) -> Path | None:
    """Keep `public` (and its log) in kept_dir_of(built) unless it is the published copy."""
    wal = wal_of(public)
    if not public.exists():
        if wal.exists():
            wal.unlink()
            log.warning("removed %s: a write-ahead log without its database", wal)
        return None
    reason = _changed(public, built)
    if reason is None:
        return None
    folder = kept_dir_of(built)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = folder / f"results-{stamp}.duckdb"
    n = 1
    while kept.exists():
        n += 1
        kept = folder / f"results-{stamp}-{n}.duckdb"
    link_or_copy(public, kept)
    if wal.exists():
        os.replace(wal, wal_of(kept))
    log.warning(
        "kept the previous %s as %s: %s. The new results replace it; open the kept file to "
        "recover anything of yours (delete it otherwise), and keep your own tables in a "
        "database of your own (README, Results).",
        public,
        kept,
        reason,
    )
    return kept
