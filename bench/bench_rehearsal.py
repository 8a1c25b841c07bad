"""A full-size rehearsal of the paper preset on the CPU: every example of the GENIES-15 datasets,
every intervention of config/paper.yaml, the `tiny` random model (2 layers, 2,048 positions,
like LLaMA-1) in place of the LLaMA models, and few training steps (everything else at full
size: 32-pair batches, few-shot prompts for every test example, probe fits on the largest
train splits, the published runs imported and aggregated beside it).

It runs `snakemake --cores N genies_table` in a scratch directory under /usr/bin/time and
prints: the wall time, the CPU time of everything and the largest process's memory; per
rule, the job count, the total and longest wall time and the peak RSS of its heaviest job
(from the rules' `benchmark:` files); the disk used under results/ and the size of
results.duckdb; and the context policy's counts (cut and skipped pairs). A failed run prints
the failing jobs' logs.

    .venv/bin/python bench/bench_rehearsal.py [--cores 2] [--steps 3] [--workdir DIR]
        [--data-dir ../shared/genies-data] [--published ../shared/genies-published/results]
        [--report-only]   # print the figures of a finished run in --workdir again

It took 39 min on 2 cores (AVX512-BF16 machine, float32 scoring); it is not part of the tests.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def rehearsal_config(data_dir: str, published: str | None, steps: int) -> dict:
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    interventions = dict(paper["interventions"])
    for name in ("lora", "prompt_tuning"):
        interventions[name] = {**interventions[name], "steps": steps, "checkpoint_every": steps}
    return {
        **paper,
        "data_dir": data_dir,
        "published": published,
        "models": {"tiny": {"source": "tiny", "seed": 0}},
        "run_models": ["tiny"],
        "interventions": interventions,
        "scoring": {**paper["scoring"], "device": "cpu", "dtype": "float32"},
        "threads": 2,
    }


def rule_of(tsv: Path, root: Path) -> str:
    return tsv.relative_to(root).parts[0].removesuffix(".tsv")


def benchmarks(workdir: Path) -> dict[str, list[tuple[float, float, str]]]:
    """rule -> [(seconds, max RSS MB, job)] from the benchmark files."""
    root = workdir / "results/benchmarks"
    out = defaultdict(list)
    for tsv in root.rglob("*.tsv"):
        with open(tsv) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows:
            rss = float(rows[0]["max_rss"]) if rows[0]["max_rss"] not in ("", "NA") else 0.0
            out[rule_of(tsv, root)].append((float(rows[0]["s"]), rss, str(tsv.relative_to(root))))
    return out


def disk_usage(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def context_counts(database: Path) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(database), read_only=True)
    try:
        return con.execute(
            "select intervention, sum(pairs_skipped), sum(pairs_cut), sum(pairs) from cells "
            "where model = 'tiny' group by intervention order by intervention"
        ).fetchall()
    finally:
        con.close()


def demonstrations_kept(workdir: Path) -> list[tuple[int, int]]:
    """(shots kept, prompts) over every (train, test example) few-shot prompt."""
    import duckdb

    scores = workdir / "results/few_shot_scores/tiny/*.parquet"
    return duckdb.execute(
        "select shots, count(*) from (select train, example_id, min(shots_kept) as shots "
        "from read_parquet(?) group by all) group by all order by shots",
        [str(scores)],
    ).fetchall()


def report(workdir: Path, text: str) -> None:
    """Print the figures of a run from its /usr/bin/time -v output and its results folder."""
    usage = dict(re.findall(r"^\s+(Maximum resident set size \(kbytes\)|User time \(seconds\)|"
                            r"System time \(seconds\)|Elapsed \(wall clock\) time \(h:mm:ss or "
                            r"m:ss\)|Exit status): (\S+)$", text, flags=re.M))  # fmt: skip
    elapsed = usage["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":")
    wall = sum(float(part) * 60**i for i, part in enumerate(reversed(elapsed)))
    done = re.findall(r"(\d+) of (\d+) steps \(\d+%\) done", text)
    steps = done[-1] if done else "?"
    print(f"exit {usage['Exit status']}; wall {wall / 60:.1f} min; steps {steps}")
    peak = int(usage["Maximum resident set size (kbytes)"]) / 1024
    cpu = float(usage["User time (seconds)"]) + float(usage["System time (seconds)"])
    # /usr/bin/time counts the processes Snakemake waited for: all jobs, the largest one's RSS
    print(f"CPU of Snakemake and every job: {cpu / 60:.1f} min; largest process {peak:.0f} MB")
    print("per rule: jobs, total s, longest s, peak RSS MB of the heaviest job (which)")
    for rule, rows in sorted(benchmarks(workdir).items()):
        total = sum(s for s, _, _ in rows)
        longest = max(s for s, _, _ in rows)
        heaviest = max(rows, key=lambda r: r[1])
        print(f"  {rule:<22} {len(rows):4d} {total:9.1f} {longest:8.1f} {heaviest[1]:8.0f}  "
              f"({heaviest[2]})")  # fmt: skip
    results = workdir / "results"
    print(f"disk under results/: {disk_usage(results) / 1e9:.2f} GB")
    for sub in ("forward", "few_shot_scores", "fit", "tune", "predictions", "published",
                "viewer"):  # fmt: skip
        if (results / sub).exists():
            print(f"  {sub:<16} {disk_usage(results / sub) / 1e6:9.1f} MB")
    database = results / "results.duckdb"
    if database.exists():
        print(f"results.duckdb: {database.stat().st_size / 1e6:.1f} MB")
        print("context policy per intervention (pairs skipped, pairs cut, pairs scored):")
        for row in context_counts(database):
            print(f"  {row[0]:<14} {row[1]} {row[2]} {row[3]}")
    if (results / "few_shot_scores").exists():
        kept = demonstrations_kept(workdir)
        total = sum(n for _, n in kept)
        print(f"few-shot prompts by demonstrations kept ({total} (train, test example) prompts):")
        print("  " + ", ".join(f"{shots}: {n} ({n / total:.1%})" for shots, n in kept))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cores", default="2")
    ap.add_argument("--steps", type=int, default=3, help="training steps of LoRA / prompt tuning")
    ap.add_argument("--data-dir", default=str(SHARED / "genies-data"))
    ap.add_argument("--published", default=str(SHARED / "genies-published/results"))
    ap.add_argument("--workdir", help="scratch directory (default: a new temporary one, kept)")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="do not run; print the figures of the finished run in --workdir",
    )
    args = ap.parse_args()
    if args.report_only:
        if not args.workdir or not (Path(args.workdir) / "rehearsal.log").exists():
            sys.exit("--report-only needs the --workdir of a finished rehearsal")
        workdir = Path(args.workdir).resolve()
        report(workdir, (workdir / "rehearsal.log").read_text())
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rehearsal_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = rehearsal_config(
        str(Path(args.data_dir).resolve()),
        str(Path(args.published).resolve()) if args.published else None,
        args.steps,
    )
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "snakemake", "genies_table",
           "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", args.cores,
           "--keep-going"]  # fmt: skip
    print(f"workdir {workdir}; load avg {os.getloadavg()}; {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    (workdir / "rehearsal.log").write_text(text)
    report(workdir, text)
    if proc.returncode != 0:
        print("FAILED jobs (see the logs below):")
        for log in re.findall(r"^\s+log: (\S+) \(check log file", text, flags=re.M):
            print(f"--- {log}\n{(workdir / log).read_text()[-3000:]}")
    print(f"kept {workdir}")


if __name__ == "__main__":
    main()
