"""Run the real Snakemake workflow in a scratch directory (used by the end-to-end tests)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import duckdb
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Snakemake with some installed package versions replaced: a simulated upgrade (fake_versions.py).
FAKE_VERSIONS = REPO / "tests" / "fake_versions.py"
#: The jobs a change of any result reruns besides its own: the aggregation and what reads it.
DOWNSTREAM = Counter(aggregate=1, publish_database=1, report_tables=1, viewer=1, genies_table=1)


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, check=True, versions=None) -> subprocess.CompletedProcess:
    return snakemake_with(REPO / "Snakefile", workdir, *args, check=check, versions=versions)


def snakemake_command(
    workdir: Path, *args: str, targets=(), snakefile: Path = REPO / "Snakefile", versions=None
) -> list:
    """The command line that runs the workflow of `snakefile` in `workdir` with its config;
    `versions` (package -> version) stand in for the installed ones.

    Targets come first: options such as --configfile take every word that follows them."""
    runner = [sys.executable, str(FAKE_VERSIONS), json.dumps(versions)] if versions else SNAKEMAKE
    return [
        *runner,
        *targets,
        "--snakefile",
        str(snakefile),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]


def snakemake_with(snakefile: Path, workdir: Path, *args: str, check=True, versions=None):
    """Run the workflow of `snakefile` in `workdir` with its config.yaml."""
    cmd = snakemake_command(workdir, "--cores", "2", *args, snakefile=snakefile, versions=versions)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-8000:]}"
        )
    return proc


def planned_jobs(workdir: Path, *targets: str, extra=(), versions=None) -> Counter:
    """Rule -> number of jobs a dry run would execute (empty when nothing is to be done), with
    `versions` standing in for installed package versions."""
    # Targets first: options such as --forcerun take every word that follows them.
    proc = snakemake(
        workdir, "--dry-run", *(targets or ("genies_table",)), *extra, versions=versions
    )
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return Counter()
    jobs = Counter()
    block = text.split("Job stats:", 1)[1]
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def planned_outputs(workdir: Path, *targets: str, extra=()) -> list[str]:
    """The output files a dry run would (re)create, for finer checks than job counts."""
    # Targets first: options such as --forcerun take every word that follows them.
    proc = snakemake(workdir, "--dry-run", *(targets or ("genies_table",)), *extra)
    lines = re.findall(r"^\s+output: (.+)$", proc.stdout + proc.stderr, flags=re.M)
    return [path for line in lines for path in line.split(", ")]


def query(workdir: Path, sql: str) -> list[dict]:
    """The rows of a query of the workflow's results.duckdb, as dicts."""
    con = duckdb.connect(str(workdir / "results/results.duckdb"), read_only=True)
    try:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()
