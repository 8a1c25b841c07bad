"""Benchmark reward-model training on SmolLM2 and real GENIES data (this CPU).

For each configuration (LoRA fp32, LoRA bf16, QLoRA = 4-bit NF4 base), in its own subprocess
so that peak RAM is per configuration:
  * training throughput of the workflow's step (chosen and rejected in ONE forward pass):
    pairs/s and real (non-pad) tokens/s over `--steps` timed steps after one warm-up step;
  * the same steps with chosen and rejected in TWO separate forward passes, in the same run;
  * the two variants alternate step by step (same batches), so load on a shared machine
    affects both alike; peak RSS after loading and after all steps.
Then (`--job`) one complete `train_reward_model` run with `CPU_PRESET` (below) on one
dataset (loading, validation and checkpoints included), the unit of the default workflow's
training jobs.

    .venv/bin/python bench/bench_training.py [--pairs 16] [--steps 2] [--batch-size 4]
        [--max-length 512] [--configs lora-fp32,lora-bf16,qlora] [--job]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from genies.data.materialise import load_split
from genies.data.raw import RawData
from genies.methods.tuned.reward_model import (
    build_reward_model,
    collate,
    encode_examples,
    pad_id_of,
    preference_loss,
)
from genies.methods.tuned.training import resolve_params, train_reward_model, train_step
from genies.methods.tuned.training_data import choose_pairs
from genies.models.prepare import prepare_model

# Few pairs and steps: what a CPU can train in a minute (config/cpu-all.yaml uses similar sizes).
CPU_PRESET = {
    "steps": 12,
    "batch_size": 4,
    "checkpoint_every": 4,
    "max_train_examples": 64,
    "val_fraction": 0.125,
    "max_length": 512,
    "eval_batch_size": 8,
}

CONFIGS = {
    "lora-fp32": {"dtype": "float32"},
    "lora-bf16": {"dtype": "bfloat16"},
    "qlora": {"dtype": "bfloat16", "quantization": "nf4"},
}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def two_pass_step(model, optimizer, pairs, pad_id, device, max_grad_norm):
    """The baseline: chosen and rejected texts in two separate forward passes."""
    optimizer.zero_grad(set_to_none=True)
    c_ids, c_mask = collate([c for c, _ in pairs], pad_id, device)
    r_ids, r_mask = collate([r for _, r in pairs], pad_id, device)
    loss = preference_loss(model(c_ids, c_mask), model(r_ids, r_mask))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(
        [p for p in model.parameters() if p.requires_grad], max_grad_norm
    )
    optimizer.step()
    return loss.item(), int(c_mask.sum() + r_mask.sum())


def run_config(args) -> dict:
    torch.set_num_threads(args.threads)
    params = resolve_params(
        "lora", {**CONFIGS[args.one], "device": "cpu", "max_length": args.max_length}
    )
    t0 = time.perf_counter()
    model, loaded = build_reward_model(args.model_dir, params, seed=0, device="cpu")
    model.train()
    load_s = time.perf_counter() - t0
    mb_loaded = peak_mb()
    table = load_split(RawData(args.data), args.dataset, "train").slice(0, args.pairs)
    cols = table.select(["prompt", "responses"]).to_pydict()
    seqs, _ = encode_examples(loaded.tokenizer, cols["prompt"], cols["responses"], args.max_length)
    rows = range(table.num_rows)
    pairs = [(seqs[r][p], seqs[r][d]) for r, p, d in choose_pairs(table, rows, 0, args.dataset)]
    batches = [pairs[i : i + args.batch_size] for i in range(0, len(pairs), args.batch_size)]
    pad = pad_id_of(loaded.tokenizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.0)
    result = {"config": args.one, "load_s": load_s, "peak_mb_loaded": mb_loaded}
    variants = {
        "one_pass": lambda b: train_step(model, optimizer, b, len(b), pad, "cpu", 0.3),
        "two_pass": lambda b: two_pass_step(model, optimizer, b, pad, "cpu", 0.3),
    }
    totals = {name: [0, 0, 0.0] for name in variants}  # pairs, tokens, seconds
    for step in variants.values():
        step(batches[0])  # warm-up (allocations, kernel selection)
    # Interleaved (one, two, one, two, ...) so that a busy machine slows both alike.
    for i in range(args.steps):
        batch = batches[i % len(batches)]
        for name, step in variants.items():
            t0 = time.perf_counter()
            _, tokens = step(batch)
            totals[name][2] += time.perf_counter() - t0
            totals[name][0] += len(batch)
            totals[name][1] += tokens
    for name, (pairs_done, tokens, seconds) in totals.items():
        result[name] = {
            "pairs_per_s": pairs_done / seconds,
            "tokens_per_s": tokens / seconds,
            "s_per_step": seconds / args.steps,
        }
    result["peak_mb"] = peak_mb()
    return result


def run_job(args) -> dict:
    """One full training job with the CPU preset (what the default workflow runs per dataset)."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.parquet"
        pq.write_table(load_split(RawData(args.data), args.dataset, "train"), train_file)
        t0 = time.perf_counter()
        info = train_reward_model(
            model_dir=args.model_dir,
            train_file=train_file,
            out_dir=Path(tmp) / "out",
            method="lora",
            params={**CPU_PRESET, "device": "cpu"},
            seed=0,
        )
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_mb": peak_mb(), **{k: info[k] for k in ("timings", "validation")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/genies-data")
    )
    ap.add_argument("--model-dir", default="resources/models/smollm2-135m")
    ap.add_argument("--dataset", default="alpaca_mmlu")
    ap.add_argument("--pairs", type=int, default=16, help="training pairs drawn (cycled)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--job", action="store_true", help="also time one CPU_PRESET training job")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    ap.add_argument("--one-job", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_config(args)))
        return
    if args.one_job:
        print("RESULT " + json.dumps(run_job(args)))
        return

    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").exists():
        model_dir = Path(tempfile.mkdtemp()) / "smollm2"
        prepare_model({"source": "smollm2"}, model_dir)
    base = [sys.executable, __file__, "--model-dir", str(model_dir), "--data", args.data,
            "--dataset", args.dataset, "--pairs", str(args.pairs), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
            "--threads", str(args.threads)]  # fmt: skip
    print(
        f"SmolLM2 at {model_dir}, dataset {args.dataset} (train), {args.pairs} pairs, batch "
        f"{args.batch_size} pairs, max_length {args.max_length}, {args.threads} threads, "
        f"{args.steps} timed steps per variant (after 1 warm-up step)"
    )
    print(
        f"{'config':10} {'load s':>7} {'one-pass pairs/s':>17} {'tokens/s':>9} {'s/step':>7} "
        f"{'two-pass pairs/s':>17} {'tokens/s':>9} {'s/step':>7} {'one/two':>8} "
        f"{'peak RSS MB load/train':>22}"
    )
    for name in args.configs.split(","):
        r = _child(base + ["--one", name])
        one, two = r["one_pass"], r["two_pass"]
        print(
            f"{name:10} {r['load_s']:7.1f} {one['pairs_per_s']:17.2f} {one['tokens_per_s']:9.0f} "
            f"{one['s_per_step']:7.2f} {two['pairs_per_s']:17.2f} {two['tokens_per_s']:9.0f} "
            f"{two['s_per_step']:7.2f} {one['pairs_per_s'] / two['pairs_per_s']:8.2f}x "
            f"{r['peak_mb_loaded']:15.0f}/{r['peak_mb']:.0f}"
        )
    if args.job:
        r = _child(base + ["--one-job"])
        print(f"one training job, lora, CPU_PRESET {CPU_PRESET}, dtype auto:")
        print(f"  wall {r['wall_s']:.1f} s, peak RSS {r['peak_mb']:.0f} MB, {r['timings']}")
        print(f"  validation: {r['validation']}")


def _child(cmd) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.exit(f"benchmark child failed ({' '.join(cmd[2:])}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


if __name__ == "__main__":
    main()
