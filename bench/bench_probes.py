"""Benchmark the probe fit/predict jobs on SmolLM2-sized synthetic activations.

Arrays shaped like SmolLM2-135M's (30 layers, 9 heads x 64, hidden 576), float16, with a
planted preference direction in a few heads and layers; `--examples` source examples x `--k`
responses (the default config caps train splits at 64), `--eval` target examples. Prints the
wall time of `fit` and `predict` per method, and of the per-unit selection probes done one
sklearn `LogisticRegression` at a time (what the published code did) for comparison.

    .venv/bin/python bench/bench_probes.py [--examples 64] [--k 4] [--threads 1] [--sklearn]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import torch

from genies.probes import METHODS, fit, predict, probe_input, training_pairs

LAYERS, HEADS, HEAD_DIM, HIDDEN = 30, 9, 64, 576


def examples_table(n, k, rng):
    pref = rng.integers(k, size=n)
    return pa.table(
        {
            "example_id": [f"bench/train/{i:05d}" for i in range(n)],
            "preferred": pa.array(pref, pa.int8()),
            "dispreferred": pa.array(
                [[j for j in range(k) if j != p] for p in pref], pa.list_(pa.int8())
            ),
            "n_responses": pa.array([k] * n, pa.int8()),
        }
    )


def synthetic(n, k, seed):
    rng = np.random.default_rng(seed)
    examples = examples_table(n, k, rng)
    sign = np.where(
        np.arange(k)[None, :] == np.asarray(examples.column("preferred"))[:, None], 1.0, -1.0
    )
    # Per-text content shared by all stimuli of a text, plus per-stimulus noise: yes/no
    # readings of one text are mostly the same vector, as in a real model.
    content_h = rng.standard_normal((n, k, LAYERS, HEADS, HEAD_DIM), dtype=np.float32)
    content_r = rng.standard_normal((n, k, LAYERS, HIDDEN), dtype=np.float32)

    def reading(flip):
        heads = content_h + 0.5 * rng.standard_normal(content_h.shape, dtype=np.float32)
        resid = content_r + 0.5 * rng.standard_normal(content_r.shape, dtype=np.float32)
        heads[:, :, 12:15, 3, 0] += flip * 1.5 * sign[..., None]
        resid[:, :, 20:, 0] += flip * 1.5 * sign[..., None]
        return {"heads": heads.astype(np.float16), "resid": resid.astype(np.float16)}

    acts = {stim: reading(1.0) for stim in ("plain", "lat2")}
    yes, no = reading(1.0), reading(-1.0)
    acts["yesno"] = {t: np.stack([yes[t], no[t]], axis=2) for t in ("heads", "resid")}
    return examples, acts


def inputs(method, dataset, examples, acts):
    spec = METHODS[method]
    return probe_input(
        dataset, examples, spec.tensor, spec.stimulus, acts[spec.stimulus][spec.tensor]
    )


def sklearn_selection_seconds(method, src, seed):
    """Selection probes one sklearn fit per unit (upstream's way), on the same texts."""
    from sklearn.linear_model import LogisticRegression

    pairs = training_pairs(src.examples, src.dataset, seed, 0.7)
    rows, responses = pairs.texts(pairs.train)
    t = len(pairs.train)
    y = np.r_[np.ones(t), np.zeros(t)]
    start = time.perf_counter()
    n_units = src.shape[2]
    x = src.features(rows, responses, np.arange(n_units))
    for u in range(n_units):
        LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(x[:, u], y)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--eval", type=int, default=48)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="report the fastest of N fits")
    ap.add_argument("--sklearn", action="store_true", help="also time per-unit sklearn probes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src_data = synthetic(args.examples, args.k, 0)
    tgt_data = synthetic(args.eval, args.k, 1)
    print(
        f"SmolLM2-sized synthetic activations: {LAYERS} layers, {HEADS} heads x {HEAD_DIM}, "
        f"hidden {HIDDEN}; source {args.examples} x k={args.k}, eval {args.eval} x k={args.k}; "
        f"torch threads {args.threads}"
    )
    per_file = args.examples * args.k * LAYERS * (HEADS * HEAD_DIM + HIDDEN) * 2
    print(
        f"activation file of one split at this size: {per_file / 2**20:.1f} MiB "
        "(plain, lat2; yesno twice that)"
    )
    print(f"{'method':<12}{'fit s':>8}{'predict s':>11}{'eval acc':>10}  selected")
    total = 0.0
    for method in METHODS:
        src = inputs(method, "bench", *src_data)
        tgt = inputs(method, "bench_eval", *tgt_data)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            state = fit(method, src, None, seed=0)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        _, correct = predict(state, tgt)
        t_pred = time.perf_counter() - start
        total += min(times)
        sel = state.info["selected"]
        print(
            f"{method:<12}{min(times):>8.2f}{t_pred:>11.3f}{correct.mean():>10.3f}  "
            f"{sel[:4]}{' ...' if len(sel) > 4 else ''}"
        )
    print(f"all five fits: {total:.2f} s")
    if args.sklearn:
        for method in ("mms", "lat1"):
            src = inputs(method, "bench", *src_data)
            secs = sklearn_selection_seconds(method, src, 0)
            print(f"{method}: per-unit sklearn LogisticRegression selection alone: {secs:.2f} s")


if __name__ == "__main__":
    main()
