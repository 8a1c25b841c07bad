"""Benchmark the probe fit/predict jobs on synthetic activations.

Default: arrays shaped like SmolLM2-135M's (30 layers, 9 heads x 64, hidden 576), float16,
with a planted preference direction in a few heads and layers; `--examples` source examples x
`--k` responses (the default config caps train splits at 64), `--eval` target examples. Prints
the wall time of `fit` and `predict` per method, and of the per-unit selection probes done
one sklearn `LogisticRegression` at a time (what the published code did) for comparison.

`--30b`: the MMS and LAT fits at LLaMA-30B shapes (60 layers; 52 heads x 128 = 3120 heads;
hidden 6656) on a paper-sized train split (600 examples x 4 responses: 420 train / 180 val
pairs), before (the library at git revision `--before`: float64 probes, QR reduction) and
after, on 1 and 2 threads, in one run so that the ratios share the machine's load; also the
agreement of the units each selects. Wall time and CPU time: on a machine without idle
cores, a second thread cannot shorten the wall time, but a CPU time that stays that of one
thread shows it costs nothing to run. `--layers N` times the first N layers only (a fit of
a single unit, LAT with `--layers 1`, runs on torch's own threads: see `genies.methods.probes`).

    .venv/bin/python bench/bench_probes.py [--examples 64] [--k 4] [--threads 1] [--sklearn]
    .venv/bin/python bench/bench_probes.py --30b [--layers 60] [--before da7015f] [--float64]
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from genies.methods import probes
from genies.methods.probes import METHODS, fit, predict, probe_input, training_pairs

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


# ----------------------------------------------------------------------------- 30B shapes

L30, HEADS30, HEAD_DIM30, HIDDEN30 = 60, 52, 128, 6656


def synthetic_30b(tensor, n, k, layers, seed):
    """[n * k, layers, (52,) 128 | 6656] float16 activations with a model's rough structure:
    a per-unit offset (a few massive dimensions in the residual stream), per-prompt content
    shared by an example's responses (low rank, decaying spread), per-text noise, and a weak
    preference direction whose strength varies over units (so the ranking is not trivial)."""
    rng = np.random.default_rng(seed)
    examples = examples_table(n, k, rng)
    sign = np.where(
        np.arange(k)[None, :] == np.asarray(examples.column("preferred"))[:, None], 1.0, -1.0
    ).astype(np.float32)
    units, dim = (HEADS30, HEAD_DIM30) if tensor == "heads" else (1, HIDDEN30)
    scale = 0.3 if tensor == "heads" else 1.0
    out = np.empty((n, k, layers, units, dim), np.float16)
    rank = 16
    for layer in range(layers):
        offset = rng.normal(size=(units, dim)).astype(np.float32) * 3 * scale
        offset[:, :2] *= 50  # massive activations
        basis = rng.standard_normal((units, rank, dim), dtype=np.float32)
        spread = np.geomspace(5, 0.2, rank, dtype=np.float32) * scale / np.sqrt(rank)
        direction = rng.standard_normal((units, dim), dtype=np.float32)
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        strength = scale * rng.uniform(0, 6, size=units).astype(np.float32)
        prompt = rng.standard_normal((n, rank), dtype=np.float32) * spread
        content = np.einsum("nr,urd->nud", prompt, basis)[:, None]  # [n, 1, units, dim]
        noise = rng.standard_normal((n, k, units, dim), dtype=np.float32) * scale
        signal = sign[:, :, None, None] * (strength[:, None] * direction)
        out[:, :, layer] = offset + content + noise + signal
    shape = (n * k, layers, units, dim) if tensor == "heads" else (n * k, layers, dim)
    return examples, out.reshape(shape)


def library_at(rev):
    """`genies.methods.probes` as of git revision `rev`, imported as a separate package."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev, "genies"], capture_output=True, check=True
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="genies-before-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "genies").rename(folder / "genies_before")
    sys.path.insert(0, str(folder))
    return importlib.import_module("genies_before.probes")


def bench_30b(args) -> None:
    """Fit times at LLaMA-30B shapes, before and after, threads 1 and 2."""
    impls = {"after": (probes, {})}
    if args.float64:
        impls["after, float64"] = (probes, {"probe_precision": "float64"})
    try:
        impls = {f"before ({args.before})": (library_at(args.before), {}), **impls}
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"no 'before': cannot read genies at git revision {args.before} ({e})")
    texts = args.examples * args.k
    print(
        f"LLaMA-30B shapes: {args.layers} of {L30} layers; {args.examples} examples x "
        f"k={args.k} ({texts} texts), pairs {int(0.7 * args.examples)} train / "
        f"{args.examples - int(0.7 * args.examples)} val; load average at start "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"
    )
    for method, tensor in (("mms", "heads"), ("lat1", "resid")):
        start = time.perf_counter()
        examples, array = synthetic_30b(tensor, args.examples, args.k, args.layers, seed=0)
        units = array.shape[1] * (array.shape[2] if tensor == "heads" else 1)
        print(
            f"\n{method}: {units} units x {array.shape[-1]}, {array.nbytes / 2**30:.2f} GiB "
            f"float16 (made in {time.perf_counter() - start:.0f} s)"
        )
        print(
            f"{'implementation':<24}{'threads':>8}{'fit s':>9}{'CPU s':>9}{'load avg':>10}"
            "  selected"
        )
        seconds, selected = {}, {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name, (library, params) in impls.items():
                inp = library.probe_input("bench", examples, tensor, "plain", array)
                start, cpu = time.perf_counter(), time.process_time()
                state = library.fit(method, inp, params, seed=0)
                seconds[name, threads] = time.perf_counter() - start
                cpu = time.process_time() - cpu
                selected[name] = state.tensors["units"]
                sel = state.info["selected"]
                print(
                    f"{name:<24}{threads:>8}{seconds[name, threads]:>9.1f}{cpu:>9.1f}"
                    f"{os.getloadavg()[0]:>10.2f}  {sel[:3]}{' ...' if len(sel) > 3 else ''}"
                )
        base = next(iter(impls))
        for name in impls:
            same = sorted(selected[name]) == sorted(selected[base])
            print(
                f"  {name}: {seconds[base, 1] / seconds[name, 1]:.2f}x / "
                f"{seconds[base, 2] / seconds[name, 2]:.2f}x faster than {base} on 1 / 2 "
                f"threads; 2 threads {seconds[name, 1] / seconds[name, 2]:.2f}x faster than 1; "
                f"same units: {same}"
            )
        del array
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--examples", type=int, help="source examples (default 64; --30b: 600)")
    ap.add_argument("--eval", type=int, default=48)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="report the fastest of N fits")
    ap.add_argument("--sklearn", action="store_true", help="also time per-unit sklearn probes")
    ap.add_argument("--30b", dest="paper", action="store_true", help="MMS/LAT at 30B shapes")
    ap.add_argument("--layers", type=int, default=L30, help="--30b: layers to time")
    ap.add_argument("--before", default="da7015f", help="--30b: git revision of 'before'")
    ap.add_argument(
        "--float64", action="store_true", help="--30b: also time probe_precision float64"
    )
    args = ap.parse_args()
    args.examples = args.examples or (600 if args.paper else 64)
    if args.paper:
        bench_30b(args)
        return
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
