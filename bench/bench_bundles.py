"""SLURM bundles (docs/slurm.md, "Bundles"): allocations and wall time on the test cluster, and
what a bundle saves per model load.

Default: starts the single-node SLURM cluster of the tests (tests/slurm_cluster.py: root,
Debian's SLURM, two fake GPUs), builds the tests' tiny GENIES data (4 datasets, 2 shifts) and
runs `snakemake --profile slurm genies_table` with zero-shot, few-shot and LoRA on the tiny
model from an empty results/ twice: without bundles (GENIES_SLURM_BUNDLE=1,
GENIES_SLURM_TUNE_BUNDLE=1: one allocation per GPU job, as before bundles) and with the
profile's bundles. For each it prints the sbatch submissions (GPU and CPU), the wall time of the
run, and per GPU allocation its jobs, its time limit (-t), how long it ran and how much of that
its jobs' scripts took (Snakemake's benchmark files); the rest is the per-job overhead of a
bundle (Snakemake starts every job in a job step of its own and parses the workflow there).
It checks that both runs' databases are equal.

    sudo .venv/bin/python bench/bench_bundles.py [--workdir DIR]

`--load` times genies.models.loading.load_model of the prepared SmolLM2-135M folder (as
`snakemake` prepares it: resources/models/<name>/, made in a scratch directory here) with the
page cache dropped (`echo 3 > /proc/sys/vm/drop_caches`, root; without root, a fresh copy of
the files, which is cold only as far as the copy is not cached) and then warm, as the second
job of a bundle loads it:

    sudo .venv/bin/python bench/bench_bundles.py --load [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import slurm_cluster  # noqa: E402
from tests.fixtures import TRAINED_INTERVENTIONS, make_genies_folder, workflow_config  # noqa: E402
from tests.test_slurm import CLUSTER_ARGS, _close, _tables, sbatch_calls, site_env  # noqa: E402
from tests.workflow import snakemake_command, write_config  # noqa: E402

INTERVENTIONS = {"zero_shot": {}, "few_shot": {"n_shots": 2}, "lora": TRAINED_INTERVENTIONS["lora"]}
MODES = {
    "unbundled": {"GENIES_SLURM_BUNDLE": "1", "GENIES_SLURM_TUNE_BUNDLE": "1"},
    "bundled": {},
}


def seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def benchmark_seconds(workdir: Path, target: str) -> float:
    """The script time of one job (`rule:wildcards`) from its Snakemake benchmark file."""
    rule, wildcards = target.split(":", 1)
    values = dict(item.split("=", 1) for item in wildcards.split(","))
    files = list((workdir / "results/benchmarks" / rule).rglob("*.tsv"))
    for path in files:
        parts = set(path.relative_to(workdir / "results/benchmarks" / rule).with_suffix("").parts)
        if parts == set(values.values()):
            return float(path.read_text().splitlines()[1].split("\t")[0])
    raise FileNotFoundError(f"no benchmark file of {target} among {len(files)}")


def run_mode(cluster, root: Path, mode: str, config: dict) -> dict:
    workdir = root / mode
    workdir.mkdir()
    write_config(workdir, config)
    env = site_env(SLURM_CONF=str(cluster.conf), **MODES[mode])
    cmd = snakemake_command(workdir, "--profile", "slurm", *CLUSTER_ARGS, targets=["genies_table"])
    start = time.monotonic()
    with slurm_cluster.JobRecorder(cluster) as watcher:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    log = proc.stdout + proc.stderr
    (root / f"{mode}.log").write_text(log)
    if proc.returncode != 0:
        sys.exit(f"{mode} run failed ({proc.returncode}):\n{log[-6000:]}")
    calls = sbatch_calls(log)
    gpu = [c for c in calls if c.group]
    print(f"{mode}: {len(calls)} sbatch ({len(gpu)} GPU, {len(calls) - len(gpu)} CPU), "
          f"wall {wall:.0f} s")  # fmt: skip
    overheads = []
    for call in gpu:
        job = watcher.jobs[call.slurm_jobid]
        ran = seconds(job["StartTime"], job["EndTime"])
        scripts = sum(benchmark_seconds(workdir, t) for t in call.targets)
        overheads.append((ran - scripts) / len(call.targets))
        rules = Counter(t.split(":", 1)[0] for t in call.targets)
        print(f"  GPU job {call.slurm_jobid}: {len(call.targets)} jobs ({dict(rules)}), "
              f"-t {job['TimeLimit']}, ran {ran:.0f} s, scripts {scripts:.0f} s, "
              f"overhead {overheads[-1]:.1f} s per job")  # fmt: skip
    print(f"  median overhead per GPU job: {statistics.median(overheads):.1f} s")
    return {"workdir": workdir, "calls": calls, "wall": wall}


def cluster_comparison(root: Path) -> None:
    reason = slurm_cluster.unavailable_reason()
    if reason:
        sys.exit(f"the test cluster cannot run here: {reason}")
    slurm_cluster.install()
    cluster = slurm_cluster.SlurmCluster()
    data = make_genies_folder(root / "genies-data")
    config = workflow_config(data, interventions=INTERVENTIONS)
    print(f"config: tiny model, 4 datasets, 2 shifts, {', '.join(INTERVENTIONS)}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    try:
        cluster.start()
        runs = {mode: run_mode(cluster, root, mode, config) for mode in MODES}
    finally:
        cluster.stop()
    tables = {m: _tables(run["workdir"] / "results/results.duckdb") for m, run in runs.items()}
    unbundled, bundled = tables["unbundled"], tables["bundled"]
    differ = sorted(
        name
        for name in unbundled.keys() | bundled.keys()
        if not _close(unbundled.get(name), bundled.get(name))
    )
    print(f"databases equal: {not differ}" + (f" (tables that differ: {differ})" if differ else ""))
    print(f"load avg after: {os.getloadavg()}")


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def load_times(root: Path, repeats: int) -> None:
    """SmolLM2-135M, prepared as the workflow prepares it: cold and warm loads."""
    from genies.models.loading import load_model
    from genies.models.prepare import prepare_model

    model_dir = root / "smollm2-135m"
    prepare_model({"source": "smollm2"}, model_dir)
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    print(f"SmolLM2-135M folder: {size / 1e6:.0f} MB; {os.cpu_count()} CPUs")

    def timed(path: Path) -> float:
        start = time.perf_counter()
        load_model(path, device="cpu", dtype="float32")
        return time.perf_counter() - start

    timed(model_dir)  # imports and first-use costs out of the way
    cold, warm = [], []
    for i in range(repeats):
        if drop_page_cache():
            path, how = model_dir, "page cache dropped"
        else:
            path = root / f"copy-{i}"
            shutil.copytree(model_dir, path)
            how = "fresh copy (not root: the page cache may still hold it)"
        cold.append(timed(path))
        warm.append(timed(path))
    print(f"load_model, {how}: cold {statistics.median(cold):.2f} s "
          f"(min {min(cold):.2f}), warm {statistics.median(warm):.2f} s "
          f"(min {min(warm):.2f}) over {repeats} repeats")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", help="scratch directory, kept (default: a temporary one)")
    ap.add_argument("--load", action="store_true", help="time SmolLM2 loads, cold and warm")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_bundles_")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.load:
            load_times(root, args.repeats)
        else:
            cluster_comparison(root)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"finished": time.strftime("%Y-%m-%d %H:%M")}))


if __name__ == "__main__":
    main()
