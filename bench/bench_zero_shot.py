"""Benchmark zero-shot scoring on SmolLM2 and real GENIES data.

Compares, in one run and the same dtype:
  * the workflow's scorer (prefix reuse, length-sorted batches), and
  * a plain per-pair transformers loop: every (prompt + response) of every evaluation pair as
    its own batch-size-1 sequence (the preferred response is scored once per pair).
Throughput is the examples' unique tokens (prompt once + each response once) per second, so
both rates measure the same work. Also prints processed / unique tokens of the scorer.

    .venv/bin/python bench/bench_zero_shot.py [--examples 6] [--dtype auto] [--datasets a,b]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from genies.data import load_split
from genies.models import load_model, prepare_model
from genies.raw import RawData
from genies.scoring import score_naive, score_tokenized, tokenize_examples

DEFAULT_DATASETS = "alpaca_mmlu,alpaca_long,code_hard,math,us_history_fiction,sycophancy_mimicry"


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
    ap.add_argument("--datasets", default=DEFAULT_DATASETS)
    ap.add_argument("--examples", type=int, default=6, help="test examples per dataset")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").exists():
        model_dir = Path(tempfile.mkdtemp()) / "smollm2"
        prepare_model({"source": "smollm2"}, model_dir)
    loaded = load_model(model_dir, device="auto", dtype=args.dtype)
    raw = RawData(args.data)
    prompts, responses = [], []
    for name in args.datasets.split(","):
        table = load_split(raw, name, "test").slice(0, args.examples).to_pydict()
        prompts += table["prompt"]
        responses += table["responses"]
    # Per-pair inputs of the plain loop: (prompt, preferred) and (prompt, dispreferred) each pair.
    p_ids, r_ids = tokenize_examples(loaded.tokenizer, prompts, responses)
    pair_p, pair_r = [], []
    for pid, rids in zip(p_ids, r_ids, strict=True):
        best = 0  # which response is preferred does not change the work
        for other in rids[1:]:
            pair_p.append(pid)
            pair_r.append([rids[best], other])
    unique = sum(len(p) + sum(len(r) for r in rs) for p, rs in zip(p_ids, r_ids, strict=True))

    score_tokenized(loaded.model, p_ids[:2], r_ids[:2], batch_tokens=args.batch_tokens)  # warm-up
    t0 = time.perf_counter()
    fast = score_tokenized(loaded.model, p_ids, r_ids, batch_tokens=args.batch_tokens)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    score_naive(loaded.model, pair_p, pair_r)
    t_naive = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

    print(f"model {model_dir} on {loaded.device}, dtype {loaded.dtype}, threads {args.threads}")
    print(f"examples {len(p_ids)}, evaluation pairs {len(pair_p)}, unique tokens {unique}")
    print(f"workflow scorer : {t_fast:8.2f} s  {unique / t_fast:8.1f} unique tokens/s")
    print(f"plain pair loop : {t_naive:8.2f} s  {unique / t_naive:8.1f} unique tokens/s")
    print(f"speed-up        : {t_naive / t_fast:8.2f} x")
    print(
        f"processed/unique: {fast.tokens_processed / fast.tokens_unique:8.3f} "
        f"(processed {fast.tokens_processed}, padding overhead {fast.padding_overhead:.3f})"
    )
    print(f"peak RSS        : {peak_gb:8.2f} GB")


if __name__ == "__main__":
    main()
