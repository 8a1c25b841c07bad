"""results/results.duckdb as users treat it: read while it is replaced, written to, left with a
crashed writer's log, truncated (genies.results.database)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from genies.data.predictions import read_predictions
from genies.data.shifts import Shift, shifts_table
from genies.results.aggregate import build_database
from genies.results.database import (
    DatabaseError,
    check_readable,
    connect,
    held_read_write,
    kept_dir_of,
    manifest_of,
    publish,
    require_not_held,
    wal_of,
)

# A reader in another process, as a user's notebook or the viewer would be: it opens the
# database read-only again and again, and counts what it finds, until told to stop.
POLLER = r"""
import collections, json, sys, time
from pathlib import Path
import duckdb
path, stop = sys.argv[1], Path(sys.argv[2])
seen, errors = collections.Counter(), []
print("polling", flush=True)
while not stop.exists():
    try:
        con = duckdb.connect(path, read_only=True)
        try:
            seen[con.execute("SELECT max(version) FROM cells").fetchone()[0]] += 1
        finally:
            con.close()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"seen": seen, "errors": errors[:5], "failures": len(errors)}), flush=True)
"""

# A process that opens the database read-write, adds a table of its own and is killed before it
# closes: its changes are only in the write-ahead log beside the file.
WRITER = r"""
import sys, time
import duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE mine AS SELECT 42 AS answer")
print("written", flush=True)
time.sleep(600)
"""


def database(path, version: int) -> Path:
    """A small database whose cells table says which build it is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE cells AS SELECT ? AS version, range AS i FROM range(1000)", [version])
    con.close()
    return path


def tables(path) -> set[str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {
            name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
    finally:
        con.close()


def version(path) -> int:
    con = connect(path)
    try:
        return con.execute("SELECT max(version) FROM cells").fetchone()[0]
    finally:
        con.close()


@pytest.fixture
def paths(tmp_path):
    return tmp_path / "results/database/results.duckdb", tmp_path / "results/results.duckdb"


def start(script: str, *args) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() in ("polling", "written")
    return proc


def crashed_writer(path) -> None:
    """Open `path` read-write in another process, write a table, and SIGKILL it."""
    proc = start(WRITER, path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert wal_of(path).exists()


def test_publish_swaps_in_a_copy_and_keeps_nothing_it_made(paths):
    built, public = paths
    database(built, 1)
    assert publish(built, public) is None
    assert version(public) == 1 and public.stat().st_ino != built.stat().st_ino
    record = json.loads(manifest_of(built).read_text())
    assert record["inode"] == public.stat().st_ino and record["size"] == public.stat().st_size
    os.utime(public)  # Snakemake touches a job's output after the job
    database(built.with_name("next.duckdb"), 2).replace(built)
    assert publish(built, public) is None  # the copy it made, untouched: replaced
    assert version(public) == 2 and not kept_dir_of(built).exists()


def test_a_reader_always_finds_a_whole_database(paths, tmp_path):
    built, public = paths
    database(built, 0)
    publish(built, public)
    stop = tmp_path / "stop"
    poller = start(POLLER, public, stop)
    try:
        for i in range(1, 31):
            database(built.with_name("next.duckdb"), i).replace(built)
            publish(built, public)
            time.sleep(0.02)
        time.sleep(0.5)  # time to read the last one
    finally:
        stop.touch()
        out, _ = poller.communicate(timeout=60)
    report = json.loads(out)
    assert report["failures"] == 0, report["errors"]
    seen = {int(v) for v in report["seen"]}
    assert len(seen) > 5 and max(seen) == 30, seen  # it read while the swaps happened


def test_a_table_of_the_users_is_kept(paths, caplog):
    built, public = paths
    publish(database(built, 1), public)
    con = duckdb.connect(str(public))  # read-write, as duckdb.connect opens by default
    con.execute("CREATE TABLE mine AS SELECT 42 AS answer")
    con.close()
    with caplog.at_level(logging.WARNING):
        kept = publish(built, public)
    assert kept.parent == kept_dir_of(built) and "mine" in tables(kept)
    assert "mine" not in tables(public) and version(public) == 1
    assert f"kept the previous {public} as {kept}: it was written to since it was published" in (
        caplog.text
    )


def test_a_crashed_writers_log_moves_with_the_kept_file(paths, caplog):
    built, public = paths
    publish(database(built, 1), public)
    crashed_writer(public)
    # Before: the log beside a replaced file fails every reader.
    replaced = public.with_name("plain.duckdb")
    replaced.write_bytes(public.read_bytes())
    wal_of(replaced).write_bytes(wal_of(public).read_bytes())
    os.replace(database(public.with_name("other.duckdb"), 2), replaced)
    with pytest.raises(DatabaseError, match=r"(?s)WAL does not match.*plain.duckdb.wal is the"):
        connect(replaced)
    with caplog.at_level(logging.WARNING):
        kept = publish(built, public)
    assert not wal_of(public).exists() and wal_of(kept).exists()
    assert version(public) == 1 and "mine" not in tables(public)
    assert "mine" in tables(kept)  # DuckDB replays the log when the kept file is opened
    assert "did not close it and left" in caplog.text


def test_a_truncated_database_never_blocks_a_rebuild(paths):
    built, public = paths
    publish(database(built, 1), public)
    with open(public, "r+b") as f:
        f.truncate(4096)
    with pytest.raises(DatabaseError, match="rebuild it: snakemake --cores all --forcerun"):
        connect(public)
    kept = publish(built, public)  # the damaged file is never opened
    assert version(public) == 1 and kept.stat().st_size == 4096
    # A damaged build is not published: it would replace a good database with a bad one.
    with open(built, "r+b") as f:
        f.truncate(4096)
    with pytest.raises(DatabaseError, match=f"cannot open {built}"):
        publish(built, public)
    assert version(public) == 1


def test_a_database_open_read_write_is_not_replaced(paths, caplog):
    built, public = paths
    publish(database(built, 1), public)
    holder = start(WRITER, public)
    try:
        assert held_read_write(public)
        with pytest.raises(DatabaseError, match="is open read-write in another process"):
            require_not_held(public)
        database(built.with_name("next.duckdb"), 2).replace(built)
        with caplog.at_level(logging.WARNING):
            assert publish(built, public) is None
        assert "it was not replaced and still holds the previous results" in caplog.text
    finally:
        holder.kill()
        holder.wait()
    assert not held_read_write(public)
    kept = publish(built, public)  # the crashed holder's log goes with the kept file
    assert version(public) == 2 and "mine" in tables(kept)


def test_readers_are_not_held_up_by_each_other(paths):
    built, public = paths
    publish(database(built, 1), public)
    con = connect(public)  # a read-only reader holds a shared lock only
    try:
        assert not held_read_write(public)
        require_not_held(public)
    finally:
        con.close()
    with pytest.raises(DatabaseError, match="does not exist; build it with"):
        connect(public.with_name("absent.duckdb"))


def test_the_built_database_drops_a_stale_log_of_the_file_it_replaces(tmp_path):
    shifts = tmp_path / "shifts.parquet"
    pq.write_table(shifts_table([Shift("src_a", "tgt_b", "tgt_b")]), shifts)
    out = tmp_path / "results/database/results.duckdb"
    out.parent.mkdir(parents=True)
    wal_of(out).write_bytes(b"the log of a read-write connection to the file it replaces")
    build_database(out, shifts_file=shifts, data_files=[], predictions=read_predictions([]))
    assert not wal_of(out).exists()
    check_readable(out)


def test_the_readmes_attach_example(tmp_path, monkeypatch):
    """Your own tables in your own database, the results attached read-only (README, Results)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (example,) = [b for b in blocks if "ATTACH" in b]
    monkeypatch.chdir(tmp_path)
    built, public = Path("results/database/results.duckdb"), Path("results/results.duckdb")
    con = duckdb.connect(str(database(built, 1)))
    con.execute(
        "CREATE VIEW genies_table AS SELECT 'm' AS model, 'mms' AS intervention,"
        " 0.25::DOUBLE AS avg_differential_elicitation"
    )

    con.close()
    publish(built, public)
    exec(compile(example, "README.md", "exec"), {})
    assert publish(built, public) is None  # nothing of yours was in it: replaced, nothing kept
    mine = duckdb.connect("my_analysis.duckdb", read_only=True)
    assert mine.execute("SELECT * FROM best").fetchall() == [("m", "mms", 0.25)]
    mine.close()
