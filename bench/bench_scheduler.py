"""Where the Snakemake process itself spends its time during the default run, per scheduler.

Runs `snakemake --cores 2 genies_table` on the embedded default (config.yaml) from empty
results, once per scheduler (`ilp`, Snakemake's default, which solves an integer program with
the CBC solver of PuLP each time it selects jobs, and `greedy`), with the model prepared once
beforehand and shared, under cProfile. It prints, per run: the wall time; the CPU time of the
Snakemake process itself (read from /proc while it runs; cProfile adds to it) and of the
process with its jobs and solver runs; and the profile's cumulative time in job selection,
in DAG updates after finished jobs, and waiting.

    .venv/bin/python bench/bench_scheduler.py [--schedulers ilp greedy]
        [--rate-limits profile 100/1s] [--keep]

Each run takes about as long as the default run (10-30 minutes on 2 cores). Measured: ilp 8.3
min, greedy 8.0 min; with --rate-limits 100000/1000s (no 1 s re-evaluation timers) both took
23 min with the machine idle between jobs, so the profile keeps Snakemake's default limit.
"""

from __future__ import annotations

import argparse
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# Profile entries (file fragment, function) that make up each phase of the main process.
PHASES = {
    "job selection (all)": [("scheduling/job_scheduler.py", "job_selector")],
    "  input sizes (file stats)": [("scheduling/job_scheduler.py", "update_input_sizes")],
    "  solver (ilp or greedy)": [("scheduling/milp.py", "select_jobs"),
                                 ("scheduling/greedy.py", "select_jobs")],
    "finishing jobs (DAG updates)": [("scheduling/job_scheduler.py", "_finish_jobs")],
    "waiting for jobs": [("threading.py", "wait")],
}  # fmt: skip
# The scheduler loop runs once per wake-up; each job start or finish, and each rate-limiter
# timer, wakes it (Snakemake 9 re-arms a 1 s timer on every pass while --max-jobs-per-timespan
# is set, its default being 100/1s).
LOOP = ("scheduling/job_scheduler.py", "job_selector")


def cumulative(stats: pstats.Stats, file_part: str, function: str) -> float:
    total = 0.0
    for (filename, _, name), (_, _, _, cum, _) in stats.stats.items():
        if name == function and file_part in filename:
            total = max(total, cum)  # recursive entries repeat the outermost time
    return total


def calls(stats: pstats.Stats, file_part: str, function: str) -> int:
    return sum(
        primitive
        for (filename, _, name), (primitive, *_) in stats.stats.items()
        if name == function and file_part in filename
    )


def write_default_config(workdir: Path) -> None:
    """config.yaml with its relative paths (../shared/...) made absolute from the repository."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for key in ("data_dir", "published"):
        if config.get(key):
            config[key] = str((REPO / config[key]).resolve())
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def run(scheduler: str, workdir: Path, models: Path, rate_limit: str | None) -> dict:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    write_default_config(workdir)
    (workdir / "resources").mkdir()
    shutil.copytree(models, workdir / "resources/models", symlinks=True)
    profile = workdir / "snakemake.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "snakemake",
           "genies_table", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2",
           "--scheduler", scheduler]  # fmt: skip
    if rate_limit:
        cmd += ["--max-jobs-per-timespan", rate_limit]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    log = open(workdir / "snakemake.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    own = 0.0
    while proc.poll() is None:  # the main process's own CPU (not its children's)
        own = max(own, own_cpu_seconds(proc.pid) or 0.0)
        time.sleep(0.5)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.close()
    text = (workdir / "snakemake.log").read_text()
    # (under cProfile a failed Snakemake may still exit 0)
    if proc.returncode != 0 or "steps (100%) done" not in text:
        raise SystemExit(f"{scheduler}: snakemake failed\n{text[-4000:]}")
    stats = pstats.Stats(str(profile))
    phases = {
        phase: max(cumulative(stats, f, fn) for f, fn in entries)
        for phase, entries in PHASES.items()
    }
    cpu_all = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    passes = calls(stats, *LOOP)
    return {"wall": wall, "own_cpu": own, "cpu_all": cpu_all, "passes": passes, **phases,
            "log": text}  # fmt: skip


def own_cpu_seconds(pid: int) -> float | None:
    """utime + stime of process `pid` alone (/proc/<pid>/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--schedulers", nargs="+", default=["ilp", "greedy"])
    ap.add_argument(
        "--rate-limits",
        nargs="+",
        default=["profile"],
        help="--max-jobs-per-timespan values to run each scheduler with ('profile': as the "
        "workflow profile sets it; e.g. 100/1s, Snakemake's own default)",
    )
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench_scheduler_"))
    try:
        models = scratch / "models"
        prep = scratch / "prep"
        prep.mkdir()
        write_default_config(prep)
        subprocess.run(
            [sys.executable, "-m", "snakemake", "resources/models/smollm2-135m", "--snakefile",
             str(REPO / "Snakefile"), "--directory", str(prep), "--configfile",
             str(prep / "config.yaml"), "--cores", "2"],
            check=True, capture_output=True, cwd=REPO,
        )  # fmt: skip
        shutil.move(prep / "resources/models", models)
        print(f"cpus {os.cpu_count()}, load avg {os.getloadavg()}")
        variants = [(s, rl) for s in args.schedulers for rl in args.rate_limits]
        for scheduler, rate_limit in variants:
            label = scheduler if rate_limit == "profile" else f"{scheduler}, {rate_limit}"
            r = run(scheduler, scratch / scheduler, models,
                    None if rate_limit == "profile" else rate_limit)  # fmt: skip
            jobs = r["log"].count("Finished jobid")
            print(
                f"{label}: wall {r['wall'] / 60:.1f} min, {jobs} jobs, {r['passes']} scheduler "
                f"passes; the Snakemake process "
                f"itself {r['own_cpu'] / 60:.2f} CPU-min (profiled); with its jobs and solver "
                f"runs {r['cpu_all'] / 60:.1f} CPU-min; load avg {os.getloadavg()}"
            )
            for phase in PHASES:
                print(f"  {phase:<28} {r[phase]:8.1f} s (cumulative, main process)")
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
