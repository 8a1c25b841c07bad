"""Benchmark zero-shot scoring on SmolLM2 and real GENIES data.

Compares, in one run and the same dtype:
  * the workflow's scorer (prefix reuse, length-sorted batches), and
  * a plain per-pair transformers loop: every (prompt + response) of every evaluation pair as
    its own batch-size-1 sequence (the preferred response is scored once per pair).
Throughput is the examples' unique tokens (prompt once + each response once) per second, so
both rates measure the same work. Also prints processed / unique tokens of the scorer, and the
token work ratio (positions the plain loop feeds / positions the scorer feeds): on a CPU, where
a forward pass is compute-bound at any batch size, the speed-up cannot go much beyond it.

By default the first --examples test examples of every dataset of the data folder are scored
(a sample of the whole GENIES data; datasets with 4 responses gain the most from prefix reuse,
those with 2 the least, so the speed-up is also printed per response count).

Each timing is the fastest of --repeats runs, the two scorers alternating, since the machine
may be shared.

    .venv/bin/python bench/bench_zero_shot.py [--examples 2] [--repeats 2] [--dtype auto]
        [--datasets all|a,b]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from genies.data.materialise import load_split
from genies.data.raw import RawData
from genies.forward.scoring import score_naive, score_tokenized
from genies.models.loading import load_model
from genies.models.prepare import prepare_model
from genies.models.tokens import tokenize_examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/genies-data")
    )
    ap.add_argument(
        "--model-dir",
        default="resources/models/smollm2-135m",
        help="prepared SmolLM2 directory (prepared into a temp dir if missing)",
    )
    ap.add_argument("--datasets", default="all", help="comma-separated names, or all")
    ap.add_argument("--examples", type=int, default=2, help="test examples per dataset")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each scorer (fastest counts)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = smollm2_dir(args.model_dir)
    loaded = load_model(model_dir, device="auto", dtype=args.dtype)
    names, prompts, responses = first_test_examples(args.data, args.datasets, args.examples)
    p_ids, r_ids = tokenize_examples(loaded.tokenizer, prompts, responses)
    score_tokenized(loaded.model, p_ids[:2], r_ids[:2], batch_tokens=args.batch_tokens)  # warm-up
    print(f"model {model_dir} on {loaded.device}, dtype {loaded.dtype}, threads {args.threads}")
    print(f"{len(names)} datasets, {args.examples} test examples each")
    totals = Counter()
    for k in sorted({len(rs) for rs in r_ids}):
        rows = [i for i, rs in enumerate(r_ids) if len(rs) == k]
        figures = compare(loaded.model, [p_ids[i] for i in rows], [r_ids[i] for i in rows], args)
        report(f"k={k} responses", figures)
        totals.update(figures)
    report("all (sum of the above)", totals)
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


def smollm2_dir(model_dir) -> Path:
    """`model_dir` when it holds a prepared model, else SmolLM2-135M prepared into a temp dir."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        model_dir = Path(tempfile.mkdtemp()) / "smollm2"
        prepare_model({"source": "smollm2"}, model_dir)
    return model_dir


def first_test_examples(data_dir, datasets: str, n: int):
    """(dataset names, prompts, response lists) of the first `n` test examples of each dataset.

    `datasets` is "all" (every dataset of `data_dir`) or comma-separated names.
    """
    raw = RawData(data_dir)
    names = raw.datasets() if datasets == "all" else datasets.split(",")
    prompts, responses = [], []
    for name in names:
        table = load_split(raw, name, "test").slice(0, n).to_pydict()
        prompts += table["prompt"]
        responses += table["responses"]
    return names, prompts, responses


def compare(model, p_ids, r_ids, args) -> Counter:
    """Time the scorer and the plain pair loop on the same examples."""
    # Per-pair inputs of the plain loop: (prompt, preferred) and (prompt, dispreferred) each pair.
    pair_p, pair_r = [], []
    for pid, rids in zip(p_ids, r_ids, strict=True):
        best = 0  # which response is preferred does not change the work
        for other in rids[1:]:
            pair_p.append(pid)
            pair_r.append([rids[best], other])
    t_fast = t_naive = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fast = score_tokenized(model, p_ids, r_ids, batch_tokens=args.batch_tokens)
        t_fast = min(t_fast, time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive = score_naive(model, pair_p, pair_r)
        t_naive = min(t_naive, time.perf_counter() - t0)
    return Counter(
        examples=len(p_ids),
        pairs=len(pair_p),
        unique=fast.tokens_unique,
        needed=fast.tokens_needed,
        processed=fast.tokens_processed,
        plain_processed=naive.tokens_processed,
        t_fast=t_fast,
        t_naive=t_naive,
    )


def report(label: str, f: Counter) -> None:
    unique = f["unique"]
    print(f"\n[{label}] examples {f['examples']}, pairs {f['pairs']}, unique tokens {unique}")
    print(f"workflow scorer : {f['t_fast']:8.2f} s  {unique / f['t_fast']:8.1f} unique tokens/s")
    print(f"plain pair loop : {f['t_naive']:8.2f} s  {unique / f['t_naive']:8.1f} unique tokens/s")
    print(f"speed-up        : {f['t_naive'] / f['t_fast']:8.2f} x")
    print(
        f"processed/unique: {f['processed'] / unique:8.3f} (processed {f['processed']}, "
        f"padding overhead {f['processed'] / f['needed']:.3f})"
    )
    print(
        f"token work ratio: {f['plain_processed'] / f['processed']:8.2f} "
        f"(the plain loop feeds {f['plain_processed']} positions)"
    )


if __name__ == "__main__":
    main()
