"""Benchmark building the DAG and a no-op run of the full-size workflow (issue 5's goal:
"DAG and no-op under 10 s").

Writes a config with every unique shift (`shifts: all`), all 10 interventions (parameters
`{}`) and 3 models (`tiny` registry entries that differ in seed; nothing is ever run) over the
real GENIES data, in a scratch directory, and times with the repository's Snakefile:

1. `snakemake -n genies_table` (parse + DAG + printing the jobs) and the number of jobs;
2. `snakemake --cores 2 genies_table` when everything is up to date. The up-to-date tree is
   faked without computing anything: every output the dry run lists is created empty (the
   `directory()` outputs as folders) with mtimes that increase along the DAG, so each output
   is newer than its inputs. A dry run checks that nothing would run before the real no-op
   is timed (a stale job would otherwise really run); if something would, its reasons are
   printed instead. A tree made this way has no Snakemake metadata (.snakemake/metadata), so
   the params and input triggers have nothing to compare; so the no-op is timed a
   second time after `snakemake --touch --forceall` recorded metadata for every job, as a
   real run leaves it (--no-metadata skips this).

Each command runs --repeats times; median and min are printed together with the machine's
load average (the machine may be shared). Phases come from the time each log line appears:
parse = start until "Building DAG of jobs...", DAG = until the first "Job stats:" (dry run) or
"Nothing to be done" (no-op), rest = until the process exits (printing the jobs of a dry run).

    .venv/bin/python bench/bench_dag.py [--repeats 3] [--models 3] [--shifts all]
        [--data-dir /work/shared/genies-data] [--workdir DIR] [--keep] [--no-metadata]

The workflow raises the thresholds of Python's cyclic garbage collector while Snakemake
builds the DAG and freezes it at exit (rules/common.smk); to see what the collector would
cost at its default thresholds, delete those lines in a copy.

`--loads` instead counts the model loads per model (the jobs of rules that ask for a GPU) at
the paper preset (config/paper.yaml's interventions, every example) for GENIES-15 and for all
56 shifts, with this checkout's Snakefile and with an earlier revision's (`--before`, default
the last commit before one job per (model, dataset) loaded the model for every split and
stimulus), from dry runs only:

    .venv/bin/python bench/bench_dag.py --loads [--before a7569f7]

`--allocations` counts the SLURM GPU allocations per model at the paper preset from a dry run
with `--profile slurm` (profiles/slurm/config.yaml): every bundle (a Snakemake group job) and
every GPU job outside a bundle is one `sbatch`. The three run models stand in for the paper's
7B, 13B and 30B (`tiny` entries with `params_b` 7, 13, 32.5: the time limits scale with it),
for GENIES-15 and all 56 shifts; it prints each model's GPU jobs and allocations, and per group
the bundles' sizes and summed time limits (first attempt):

    .venv/bin/python bench/bench_dag.py --allocations

A run takes about 2 minutes on 2 cores, 1 of them for the `snakemake --touch` that
--no-metadata skips.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
INTERVENTIONS = [
    "zero_shot",
    "random",
    "few_shot",
    "mms",
    "lat1",
    "lat2",
    "cra",
    "ccs",
    "lora",
    "prompt_tuning",
]
# Rules whose output is a directory() (rules/models.smk, rules/tune.smk).
DIRECTORY_RULES = {"prepare_model", "tune"}
RESULTS: list[tuple[str, dict]] = []
# `snakemake --touch` sleeps 0.1 s per job (snakemake/executors/touch.py): 10 minutes for the
# full DAG. Run it with the sleep patched out.
TOUCH_WITHOUT_SLEEP = (
    "import sys; import snakemake.executors.touch as t; t.Executor.SLEEPING_TIME = 0; "
    "from snakemake.cli import main; sys.argv[0] = 'snakemake'; main()"
)


def write_config(workdir: Path, data_dir: str, shifts: str, n_models: int) -> None:
    models = {f"tiny-{i}": {"source": "tiny", "seed": i} for i in range(n_models)}
    config = {
        "data_dir": data_dir,
        "shifts": shifts,
        "models": models,
        "run_models": list(models),
        "interventions": {name: {} for name in INTERVENTIONS},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake_cmd(workdir: Path, *args: str, python_code: str | None = None) -> list[str]:
    head = (
        [sys.executable, "-c", python_code] if python_code else [sys.executable, "-m", "snakemake"]
    )
    return [
        *head,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]


class Run:
    """One timed snakemake process: its merged output and when each line appeared."""

    def __init__(self, cmd: list[str], done_marker: str):
        self.load = os.getloadavg()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        lines, self.parse_s, self.dag_s = [], None, None
        for line in proc.stdout:
            now = time.perf_counter() - start
            if self.parse_s is None and line.startswith("Building DAG of jobs"):
                self.parse_s = now
            if self.dag_s is None and line.startswith(done_marker):
                self.dag_s = now
            lines.append(line)
        _, status, usage = os.wait4(proc.pid, 0)
        self.total_s = time.perf_counter() - start
        self.returncode = proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.text = "".join(lines)
        if self.returncode != 0:
            raise SystemExit(f"failed ({self.returncode}): {' '.join(cmd)}\n{self.text[-5000:]}")


def job_stats(text: str) -> Counter:
    """Rule -> job count from the (first) "Job stats:" table, with "total"."""
    jobs = Counter()
    if "Job stats:" not in text:
        return jobs
    for line in text.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        jobs[m.group(1)] = int(m.group(2))
    return jobs


def dry_run_jobs(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(rule, inputs, outputs) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"^(?:localrule|rule) ", text, flags=re.M)[1:]:
        rule = block.split(":", 1)[0]
        fields = dict(re.findall(r"^\s+(input|output): (.+)$", block, flags=re.M))
        inputs = fields["input"].split(", ") if "input" in fields else []
        outputs = fields["output"].split(", ") if "output" in fields else []
        jobs.append((rule, inputs, outputs))
    return jobs


def fake_outputs(workdir: Path, jobs) -> int:
    """Create every output, each newer than its inputs; returns the number of paths."""
    producer = {out: i for i, (_, _, outputs) in enumerate(jobs) for out in outputs}
    level: dict[int, int] = {}

    def depth(i: int) -> int:  # 0 = reads only raw data
        if i not in level:
            level[i] = 1 + max(
                (depth(producer[f]) for f in jobs[i][1] if f in producer), default=-1
            )
        return level[i]

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    raw = {f for _, inputs, _ in jobs for f in inputs if f not in producer}
    newest_raw = max((os.stat(f).st_mtime for f in raw if os.path.exists(f)), default=0.0)
    base = max(time.time() - 3600, newest_raw + 1)
    paths = []
    for i, (rule, _, outputs) in enumerate(jobs):
        for out in outputs:
            path = workdir / out
            path.parent.mkdir(parents=True, exist_ok=True)
            if rule in DIRECTORY_RULES:
                path.mkdir(exist_ok=True)
            else:
                path.touch()
            paths.append((path, base + 10 * depth(i)))
    # Only after every path exists: creating a file changes its folder's mtime.
    for path, mtime in paths:
        os.utime(path, (mtime, mtime))
    return len(paths)


def reasons(text: str) -> str:
    block = text.split("Reasons:", 1)[1] if "Reasons:" in text else ""
    return block.split("This was a dry-run", 1)[0].rstrip()


def timed(label: str, cmd: list[str], marker: str, repeats: int) -> list[Run]:
    runs = []
    for r in range(repeats):
        run = Run(cmd, marker)
        runs.append(run)
        phases = f"parse {run.parse_s or 0:5.2f}, until {marker!r} {run.dag_s or 0:6.2f}"
        load = " ".join(f"{x:.2f}" for x in run.load)
        print(
            f"  {label} #{r + 1}: wall {run.total_s:6.2f} s ({phases}), "
            f"cpu {run.cpu_s:6.2f} s, load avg {load}"
        )
    summary = {
        "wall": [r.total_s for r in runs],
        f"until {marker!r}": [r.dag_s for r in runs if r.dag_s is not None],
        "parse": [r.parse_s for r in runs if r.parse_s is not None],
        "cpu": [r.cpu_s for r in runs],
    }
    for what, values in summary.items():
        if values:
            print(
                f"  {label} {what}: median {statistics.median(values):.2f} s, "
                f"min {min(values):.2f} s"
            )
    RESULTS.append((label, summary))
    return runs


def noop(workdir: Path, repeats: int, cores: str, label: str) -> None:
    check = Run(snakemake_cmd(workdir, "--dry-run", "genies_table"), "Nothing to be done")
    if "Nothing to be done" not in check.text:
        stats = job_stats(check.text)
        print(f"  NOT up to date: {stats.get('total', '?')} jobs would run: {dict(stats)}")
        print(reasons(check.text))
        print("  (the no-op is not timed: it would run those jobs)")
        return
    runs = timed(
        label,
        snakemake_cmd(workdir, "--cores", cores, "genies_table"),
        "Nothing to be done",
        repeats,
    )
    ok = all("Nothing to be done" in r.text for r in runs)
    print(f"  every run said 'Nothing to be done': {ok}")


# The last revision before forward jobs per (model, dataset), few-shot scoring per eval dataset
# and trainings that predict: one load per (stimulus, dataset, split), (source, eval) and
# (adapter, eval).
BEFORE = "a7569f7"


def paper_config(workdir: Path, data_dir: str, shifts: str) -> None:
    """The paper preset's interventions and caps on one `tiny` model (nothing is run)."""
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    config = {
        "data_dir": data_dir,
        "shifts": shifts,
        "models": {"tiny": {"source": "tiny"}},
        "run_models": ["tiny"],
        "interventions": paper["interventions"],
        "capability_interventions": paper["capability_interventions"],
        "caps": {"train_examples": None, "test_examples": None},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def gpu_jobs(snakefile: Path, workdir: Path) -> Counter:
    """Rule -> number of jobs that ask for a GPU (each loads the model), from a dry run."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "genies_table", "--snakefile", str(snakefile)]
    cmd += ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml")]
    text = Run(cmd, "Job stats:").text
    loads = Counter()
    for block in re.split(r"^(?:localrule|rule) ", text, flags=re.M)[1:]:
        resources = re.search(r"^\s+resources: (.+)$", block, flags=re.M)
        if resources and re.search(r"\bgpu=[1-9]", resources.group(1)):
            loads[block.split(":", 1)[0]] += 1
    return loads


def model_loads(data_dir: str, before: str) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_loads_") as tmp:
        old = Path(tmp) / "before"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", before], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        print(f"model loads per model at the paper preset (jobs of GPU rules; before = {before})")
        for shifts in ("genies", "all"):
            counts = {}
            for label, snakefile in (("before", old / "Snakefile"), ("now", REPO / "Snakefile")):
                workdir = Path(tmp) / f"{label}-{shifts}"
                workdir.mkdir()
                paper_config(workdir, data_dir, shifts)
                counts[label] = gpu_jobs(snakefile, workdir)
            b, n = (sum(c.values()) for c in (counts["before"], counts["now"]))
            print(f"  shifts={shifts}: {b} -> {n} loads ({b / n:.1f}x fewer)")
            for label, c in counts.items():
                print(f"    {label:<6}: " + ", ".join(f"{r} {k}" for r, k in sorted(c.items())))


# The paper's model sizes (billions of parameters), as `tiny` stand-ins for --allocations.
PAPER_SIZES = {"7b": 7, "13b": 13, "30b": 32.5}


def slurm_allocations(workdir: Path) -> list[dict]:
    """The GPU allocations of a dry run with the SLURM profile: one per bundle (group job),
    one per GPU job outside a bundle; each with its group, models, rules and summed runtime."""
    cmd = snakemake_cmd(workdir, "-n", "--profile", str(REPO / "profiles/slurm"), "genies_table")
    text = Run(cmd, "Job stats:").text
    jobs, group = [], None  # group: the group job whose indented jobs follow
    for line in text.splitlines():
        if "] Group job " in line:
            group = {"group": line.split("] Group job ", 1)[1].split()[0], "jobs": []}
        elif match := re.match(r"(\s*)(?:local)?rule (\w+):", line):
            if not match.group(1):
                group = None
            jobs.append({"rule": match.group(2), "bundle": group})
        elif jobs and (match := re.match(r"\s+(wildcards|resources): (.+)", line)):
            jobs[-1][match.group(1)] = dict(
                item.split("=", 1) for item in match.group(2).split(", ") if "=" in item
            )
    allocations = {}
    for job in jobs:
        if int(job.get("resources", {}).get("gpu", 0)) < 1:
            continue
        key = id(job["bundle"]) if job["bundle"] else id(job)
        allocation = allocations.setdefault(
            key,
            {"group": job["bundle"]["group"] if job["bundle"] else None, "models": set(),
             "rules": Counter(), "runtime": 0},
        )  # fmt: skip
        allocation["models"].add(job["wildcards"]["model"])
        allocation["rules"][job["rule"]] += 1
        allocation["runtime"] += int(job["resources"]["runtime"])
    return list(allocations.values())


def allocations_report(data_dir: str) -> None:
    print("SLURM GPU allocations per model at the paper preset (dry run, --profile slurm)")
    for shifts in ("genies", "all"):
        with tempfile.TemporaryDirectory(prefix="bench_allocations_") as tmp:
            workdir = Path(tmp)
            paper_config(workdir, data_dir, shifts)
            config = yaml.safe_load((workdir / "config.yaml").read_text())
            config["models"] = {
                f"tiny-{name}": {"source": "tiny", "params_b": size}
                for name, size in PAPER_SIZES.items()
            }
            config["run_models"] = list(config["models"])
            (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            allocations = slurm_allocations(workdir)
        print(f"  shifts={shifts}:")
        for model in config["run_models"]:
            mine = [a for a in allocations if a["models"] == {model}]
            jobs = sum(sum(a["rules"].values()) for a in mine)
            print(f"    {model}: {jobs} GPU jobs in {len(mine)} allocations")
            by_group = {}
            for a in mine:
                by_group.setdefault(a["group"], []).append(a)
            for group, bundles in sorted(by_group.items(), key=lambda kv: str(kv[0])):
                sizes = sorted((sum(b["rules"].values()) for b in bundles), reverse=True)
                hours = max(b["runtime"] for b in bundles) / 60
                rules = sum((b["rules"] for b in bundles), Counter())
                print(
                    f"      {group or 'unbundled'}: {len(bundles)} x {sizes} jobs "
                    f"({', '.join(f'{r} {n}' for r, n in sorted(rules.items()))}); "
                    f"longest time limit {hours:.1f} h"
                )
        stray = [a for a in allocations if len(a["models"]) != 1]
        if stray:
            print(f"    bundles mixing models: {stray}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default="/work/shared/genies-data")
    ap.add_argument("--shifts", default="all", help="genies | all | extreme | probing | file")
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores", default="2")
    ap.add_argument("--workdir", help="scratch directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument(
        "--no-metadata",
        dest="metadata",
        action="store_false",
        help="skip the no-op with metadata recorded by `snakemake --touch`",
    )
    ap.add_argument("--loads", action="store_true", help="count model loads, before and now")
    ap.add_argument("--before", default=BEFORE, help="the earlier revision of --loads")
    ap.add_argument(
        "--allocations", action="store_true", help="count SLURM GPU allocations per model"
    )
    args = ap.parse_args()
    if args.loads:
        return model_loads(str(Path(args.data_dir).resolve()), args.before)
    if args.allocations:
        return allocations_report(str(Path(args.data_dir).resolve()))

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_dag_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        write_config(workdir, str(Path(args.data_dir).resolve()), args.shifts, args.models)
        print(f"workdir {workdir}; cpus {os.cpu_count()}; load avg {os.getloadavg()}")
        print(
            f"config: shifts={args.shifts}, {len(INTERVENTIONS)} interventions, "
            f"{args.models} models, data {args.data_dir}"
        )

        print("1. dry run: snakemake -n genies_table")
        runs = timed(
            "dry run", snakemake_cmd(workdir, "-n", "genies_table"), "Job stats:", args.repeats
        )
        text = runs[0].text
        stats = job_stats(text)
        print(f"  jobs in the DAG: {stats['total']}")
        print("  " + ", ".join(f"{rule} {n}" for rule, n in stats.items() if rule != "total"))
        shifts = re.findall(r"entry \d+ repeats shift", text)
        print(f"  (duplicate shifts dropped from the shift file: {len(shifts)})")

        print("2. no-op: snakemake --cores 2 genies_table with every output up to date")
        start = time.perf_counter()
        jobs = dry_run_jobs(text)
        n = fake_outputs(workdir, jobs)
        print(
            f"  created {n} outputs of {len(jobs)} jobs (empty, increasing mtimes) "
            f"in {time.perf_counter() - start:.1f} s"
        )
        noop(workdir, args.repeats, args.cores, "no-op (no metadata)")

        if args.metadata:
            start = time.perf_counter()
            Run(
                snakemake_cmd(
                    workdir,
                    "--touch",
                    "--forceall",
                    "--cores",
                    args.cores,
                    "genies_table",
                    python_code=TOUCH_WITHOUT_SLEEP,
                ),
                "Job stats:",
            )
            records = sum(1 for _ in (workdir / ".snakemake/metadata").iterdir())
            print(
                f"  snakemake --touch --forceall recorded {records} metadata files "
                f"in {time.perf_counter() - start:.1f} s"
            )
            noop(workdir, args.repeats, args.cores, "no-op (with metadata)")
        print(f"summary (goal: DAG and no-op under 10 s; load avg now {os.getloadavg()}):")
        for label, summary in RESULTS:
            cells = ", ".join(
                f"{what} {statistics.median(v):.2f}/{min(v):.2f}"
                for what, v in summary.items()
                if v
            )
            print(f"  {label:<26} median/min s: {cells}")
    finally:
        if args.keep or args.workdir:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
