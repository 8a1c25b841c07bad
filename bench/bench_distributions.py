"""Time and peak memory of materialising a distribution of one's own at the size of the
common preference sets: synthetic rows shaped like UltraFeedback-binarized (`messages`, Parquet,
about 61k train rows), HH-RLHF (`transcript`, JSON Lines, about 160k rows) and a `ranked` file
with four scored responses per prompt. Each layout runs in its own process: pin (sha256) and
the train split's materialisation (`datasets.load_dataset`, conversion, GENIES checks, Parquet).

    .venv/bin/python bench/bench_distributions.py [--rows 61000] [--layouts messages,ranked]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
WORDS = "the a reward model prefers helpful honest answers over vague ones to a question".split()


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def row(layout: str, i: int, rng: random.Random) -> dict:
    prompt = f"{text(rng, 40)} ({i})?"
    good, bad = text(rng, 120), text(rng, 110) + " no"
    if layout == "messages":
        turn = {"role": "user", "content": prompt}
        return {
            "prompt": prompt,
            "chosen": [turn, {"role": "assistant", "content": good}],
            "rejected": [turn, {"role": "assistant", "content": bad}],
            "score_chosen": 8.0,
        }
    if layout == "transcript":
        head = f"\n\nHuman: {prompt}\n\nAssistant:"
        return {"chosen": f"{head} {good}", "rejected": f"{head} {bad}"}
    responses = [good, bad, text(rng, 90) + " x", text(rng, 60) + " y"]
    return {"prompt": prompt, "responses": responses, "scores": [9.0, 2.0, 5.5, 4.0]}


SUFFIX = {"messages": ".parquet", "transcript": ".jsonl", "ranked": ".jsonl"}

CHILD = """
import json, resource, sys, time
from genies.data.distributions import materialise_distribution, pin_source
spec, work = json.loads(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
pin_source("bench", spec, f"{work}/source.json")
t1 = time.perf_counter()
materialise_distribution("bench", spec, "train", f"{work}/source.json", f"{work}/train.parquet")
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"pin_s": t1 - t0, "materialise_s": t2 - t1, "peak_mib": peak}))
"""


def write(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=61_000)
    ap.add_argument("--layouts", default="messages,transcript,ranked")
    args = ap.parse_args()
    print(f"{'layout':<11} {'rows':>8} {'MiB':>7} {'pin s':>7} {'load+check s':>13} {'rows/s':>8} "
          f"{'peak MiB':>9}")  # fmt: skip
    for layout in args.layouts.split(","):
        rng = random.Random(0)
        with tempfile.TemporaryDirectory() as work:
            data = Path(work) / f"train{SUFFIX[layout]}"
            write(data, [row(layout, i, rng) for i in range(args.rows)])
            spec = {"files": {"train": str(data)}, "layout": layout, "splits": {"train": "train"}}
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(spec), work],
                capture_output=True,
                text=True,
                cwd=REPO,
                check=True,
            )
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            size = data.stat().st_size / 2**20
            rate = args.rows / got["materialise_s"]
            times = f"{got['pin_s']:>7.2f} {got['materialise_s']:>13.2f} {rate:>8.0f}"
            print(f"{layout:<11} {args.rows:>8} {size:>7.1f} {times} {got['peak_mib']:>9.0f}")


if __name__ == "__main__":
    main()
