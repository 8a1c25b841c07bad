"""GPU counts, host memory and scratch space of the model jobs at the paper preset, and an
ESTIMATE (nothing runs on a GPU) of the paper preset's wall time for one 7B model on one H100.

Table, per model shape (bench_memory.LLAMA; params_b from the shape):
- GPUs at 80 GB and 141 GB: `genies.pipeline.gpus.model_gpus`, for the scoring jobs (bf16) and
  the QLoRA trainings (NF4), with the GPUs' memory as torch reports it;
- host memory of a GPU job: `genies.pipeline.cluster.held_mem_mb` of the largest safetensors
  shard of the released Hugging Face checkpoints (`SHARD_GB`);
- scratch: the activation file of every forward job of config/paper.yaml over the real data
  (`genies.pipeline.cluster.activation_bytes`, every example), the largest one (what a job's
  scratch must hold, and what a tmpfs scratch adds to its mem_mb) and all of them.

Estimate, for llama-7b: the tokens of every model call of the paper preset (GENIES-15), counted
on the real data by the jobs' own code (the scorer's passes with their prefix reuse and
few-shot prompts fitted to LLaMA's 2,048 positions, the training job's pairs, validations and
predictions) with the SmolLM2 tokenizer as a proxy for LLaMA's; FLOPs per token 2 N plus
attention (training: forward and the backward to the inputs, 2x); divided by an assumed share
(`MFU`) of the H100's bf16 peak; plus one model load per job (`LOAD_S`).

    .venv/bin/python bench/bench_gpus.py [--data-dir ../shared/genies-data] [--no-estimate]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import yaml
from bench_memory import LLAMA  # noqa: I001 - bench/ is the script's folder

from genies.data.materialise import load_split
from genies.data.raw import RawData
from genies.forward.baselines import few_shot_examples
from genies.pipeline.cluster import activation_bytes, held_mem_mb
from genies.pipeline.gpus import model_gpus
from genies.pipeline.plan import Plan

REPO = Path(__file__).resolve().parent.parent
GB = 1e9
# Largest safetensors file of the Hugging Face conversions (max_shard_size 10 GB; Meta's
# Llama-3-8B ships shards of at most 5 GB): what a GPU job holds on the host while loading.
SHARD_GB = {"llama-3-8b": 5.0}
DEFAULT_SHARD_GB = 10.0
CONTEXT = 2048  # LLaMA-1's positions
# Assumptions of the estimate. H100 SXM dense bf16 peak (NVIDIA's datasheet, without
# sparsity); achieved shares of it for Hugging Face transformers + SDPA at these sequence
# lengths (a few hundred tokens): scoring and no-grad calls on a bf16 model, and 4-bit QLoRA
# (bitsandbytes dequantises every weight for every micro-batch and call).
H100_BF16_FLOPS = 989e12
MFU = {"scoring": 0.40, "qlora_train": 0.20, "qlora_eval": 0.25}
# One model load: Python, torch and CUDA start (10 s), 13.5 GB of bf16 weights from the node's
# disk or page cache (10 s) onto the GPU (5 s); a 4-bit load also quantises every weight (20 s).
LOAD_S = {"bf16": 25.0, "nf4": 45.0}


def paper_plan(data_dir: str) -> Plan:
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    return Plan({**paper, "data_dir": data_dir, "shifts": "genies"})


class Splits:
    """Materialised splits of the raw data, read once."""

    def __init__(self, data_dir: str):
        self.raw, self.cache = RawData(data_dir), {}

    def __call__(self, dataset: str, split: str):
        if (dataset, split) not in self.cache:
            self.cache[(dataset, split)] = load_split(self.raw, dataset, split)
        return self.cache[(dataset, split)]


# --------------------------------------------------------------------------- table


def table(plan: Plan, splits: Splits) -> list[str]:
    run_model = plan.models[0]
    responses = {}
    for dataset in plan.datasets:
        for split in plan.forward_work(dataset, run_model):
            responses[(dataset, split)] = splits(dataset, split).column("responses").to_pylist()
    rows = [
        "| model | parameters | GPUs at 80 GB (scoring / QLoRA) | GPUs at 141 GB | host memory "
        "per GPU job | activation file, largest job | all activation files | largest forward "
        "job's mem_mb with a tmpfs scratch |",
        "|" + "---|" * 8,
    ]
    for name, shape in LLAMA.items():
        spec = {"params_b": shape.parameters() / 1e9}
        counts = [
            f"{model_gpus(spec, gb, 2)} / {model_gpus(spec, gb, 2, 'nf4')}" for gb in (80, 141)
        ]
        host = held_mem_mb(int(SHARD_GB.get(name, DEFAULT_SHARD_GB) * GB))
        files = []
        for dataset in plan.datasets:
            work = plan.forward_work(dataset, run_model)
            by_split = {split: responses[(dataset, split)] for split in work}
            files.append(activation_bytes(work, by_split, shape.layout()))
        largest = max(files)
        rows.append(
            f"| {name} | {shape.parameters() / 1e9:.2f} B | {counts[0]} | {counts[1]} | "
            f"{host / 1024:.1f} GiB | {largest / GB:.1f} GB | {sum(files) / GB:.0f} GB | "
            f"{(host + math.ceil(largest / 2**20)) / 1024:.1f} GiB |"
        )
    return rows


# --------------------------------------------------------------------------- estimate


def tokenizer_and_model(model_dir: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.model_max_length = CONTEXT
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=CONTEXT))
    return tokenizer, model


def pass_tokens(p) -> tuple[int, int]:
    """(tokens, calls of mean context) the scorer runs for a pass: each prompt once, then
    every continuation of it (prefix reuse); skipped examples not at all."""
    tokens = contexts = 0
    for prompt, responses, skipped in zip(p.prompt_ids, p.response_ids, p.fit.skipped, strict=True):
        if skipped:
            continue
        tokens += len(prompt) + sum(map(len, responses))
        contexts += len(prompt) * len(prompt) / 2 + sum(
            len(r) * (len(prompt) + len(r) / 2) for r in responses
        )
    return tokens, contexts


def flops(tokens: float, attended: float, shape) -> float:
    """Forward FLOPs of `tokens` tokens that attend over `attended` positions in all."""
    return 2 * shape.parameters() * tokens + 4 * shape.num_layers * shape.hidden_size * attended


def estimate(plan: Plan, splits: Splits, model_dir: str) -> list[str]:
    from genies.forward.job import FEW_SHOT, _Pass
    from genies.methods.tuned.reward_model import encode_examples
    from genies.methods.tuned.training import PairOrder, _TrainingData, resolve_params

    shape = LLAMA["llama-7b"]
    tokenizer, model = tokenizer_and_model(model_dir)
    loaded = SimpleNamespace(model=model, tokenizer=tokenizer, layout=shape.layout())
    totals = {}  # kind -> [tokens, FLOPs, jobs]

    def add(kind, tokens, work, jobs=0):
        entry = totals.setdefault(kind, [0, 0.0, 0])
        entry[0] += tokens
        entry[1] += work
        entry[2] += jobs

    run_model = plan.models[0]
    for dataset in plan.datasets:
        add("forward", 0, 0.0, jobs=1)
        for split, stimuli in plan.forward_work(dataset, run_model).items():
            for stimulus, kinds in stimuli.items():
                p = _Pass(split, stimulus, splits(dataset, split), kinds, loaded, "cut_prompt")
                tokens, attended = pass_tokens(p)
                add("forward", tokens, flops(tokens, attended, shape))
    n_shots = plan.params("few_shot")["n_shots"]
    for ev in plan.few_shot_evals():
        add("few_shot", 0, 0.0, jobs=1)
        for source in plan.few_shot_sources(ev):
            table = few_shot_examples(splits(ev, "test"), splits(source, "train"), n_shots, 0)
            p = _Pass("test", FEW_SHOT, table, {}, loaded, "cut_prompt", train=source)
            tokens, attended = pass_tokens(p)
            add("few_shot", tokens, flops(tokens, attended, shape))
    for method in ("lora", "prompt_tuning"):
        params = resolve_params(method, plan.params(method))
        virtual = params["num_virtual_tokens"] if method == "prompt_tuning" else 0
        trains = sorted({t for t, _ in plan.train_eval_pairs(method)})
        for train in trains:
            add("train", 0, 0.0, jobs=1)
            data = _TrainingData(splits(train, "train"), tokenizer, params, 0, train)
            order = PairOrder(len(data.pairs), params["batch_size"], 0, train)
            steps = range(1, params["steps"] + 1)
            seqs = [s for step in steps for i in order.batch(step) for s in data.pairs[i]]
            tokens = sum(len(s) + virtual for s in seqs)
            attended = sum((len(s) + virtual) ** 2 / 2 for s in seqs)
            add("train", tokens, 2 * flops(tokens, attended, shape))
            checks = params["steps"] // params["checkpoint_every"]
            val = [s for row in data.val_seqs for s in row]
            tokens = checks * sum(len(s) + virtual for s in val)
            attended = checks * sum((len(s) + virtual) ** 2 / 2 for s in val)
            add("validate", tokens, flops(tokens, attended, shape))
            for ev in plan.tuned_evals(method, train):
                cols = splits(ev, "test").select(["prompt", "responses"]).to_pydict()
                seqs, _ = encode_examples(tokenizer, cols["prompt"], cols["responses"], None)
                flat = [s for row in seqs for s in row]
                tokens = sum(len(s) + virtual for s in flat)
                attended = sum((len(s) + virtual) ** 2 / 2 for s in flat)
                add("predict", tokens, flops(tokens, attended, shape))
    seconds = {
        "forward": totals["forward"][1] / (MFU["scoring"] * H100_BF16_FLOPS),
        "few_shot": totals["few_shot"][1] / (MFU["scoring"] * H100_BF16_FLOPS),
        "train": totals["train"][1] / (MFU["qlora_train"] * H100_BF16_FLOPS),
        "validate": totals["validate"][1] / (MFU["qlora_eval"] * H100_BF16_FLOPS),
        "predict": totals["predict"][1] / (MFU["qlora_eval"] * H100_BF16_FLOPS),
    }
    jobs_bf16 = totals["forward"][2] + totals["few_shot"][2]
    jobs_nf4 = totals["train"][2]
    seconds["model loads"] = jobs_bf16 * LOAD_S["bf16"] + jobs_nf4 * LOAD_S["nf4"]
    total = sum(seconds.values())
    rows = [
        f"Paper preset (GENIES-15, every example) for llama-7b on one H100: {jobs_bf16} scoring "
        f"jobs (forward {totals['forward'][2]}, few-shot {totals['few_shot'][2]}) and {jobs_nf4} "
        f"QLoRA trainings, {jobs_bf16 + jobs_nf4} model loads.",
        "",
        "| part | tokens | FLOPs | assumed throughput | time | share |",
        "|---|---|---|---|---|---|",
    ]
    rate = {"forward": "scoring", "few_shot": "scoring", "train": "qlora_train",
            "validate": "qlora_eval", "predict": "qlora_eval"}  # fmt: skip
    for kind, secs in seconds.items():
        if kind == "model loads":
            what = f"{LOAD_S['bf16']:.0f} s per bf16 load, {LOAD_S['nf4']:.0f} s per NF4 load"
            rows.append(f"| {kind} | - | - | {what} | {secs / 60:.1f} min | "
                        f"{100 * secs / total:.0f}% |")  # fmt: skip
            continue
        tokens, work, _ = totals[kind]
        rows.append(
            f"| {kind} | {tokens / 1e6:.1f} M | {work / 1e15:.0f} PFLOP | "
            f"{MFU[rate[kind]]:.0%} of {H100_BF16_FLOPS / 1e12:.0f} TFLOPS | "
            f"{secs / 60:.1f} min | {100 * secs / total:.0f}% |"
        )
    training = seconds["train"] + seconds["validate"] + seconds["predict"]
    rows += [
        f"| total | | | | {total / 60:.0f} min | |",
        "",
        f"Training (the QLoRA steps, their validations and the trained models' predictions): "
        f"{100 * training / total:.0f}%; model loading: {100 * seconds['model loads'] / total:.0f}%"
        f"; scoring (forward passes and few-shot): "
        f"{100 * (seconds['forward'] + seconds['few_shot']) / total:.0f}%.",
    ]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared/genies-data"))
    ap.add_argument("--model-dir", default="resources/models/smollm2-135m",
                    help="the SmolLM2 tokenizer, a proxy for LLaMA's")  # fmt: skip
    ap.add_argument("--no-estimate", action="store_true")
    args = ap.parse_args()
    start = time.time()
    plan, splits = paper_plan(args.data_dir), Splits(args.data_dir)
    print("\n".join(table(plan, splits)))
    if not args.no_estimate:
        print()
        print("\n".join(estimate(plan, splits, args.model_dir)))
    print(f"\n({time.time() - start:.0f} s on {sys.platform})")


if __name__ == "__main__":
    main()
