"""Prepared GPU check of the paper-scale path (issue 10) on ONE H100/H200, in under 8 minutes.

It builds a random-weight Llama with 7B dimensions (the `tiny` source scaled up: 32 layers,
hidden 4096, 32 heads, intermediate 11008, vocabulary 32000, 2048 positions) directly on the
GPU in bfloat16 (nothing written to disk), with a byte-level BPE tokenizer of 32,000 entries
trained on the sample's texts, and with it:

1. scores a few real GENIES datasets like the forward job (the context policy applied, the
   per-head activations of every layer captured), plus one 5-shot dataset whose demonstrations
   must be dropped to fit 2048 positions;
2. trains LoRA and QLoRA reward models (NF4 base, quantised in memory) for a few steps of 32
   pairs each, under the memory plan (`genies.models.memory`);
3. prints tokens/s, pairs/s and the peak GPU memory (torch.cuda.max_memory_allocated) of each
   stage beside the planned figure.

Needs only torch, transformers, peft, accelerate, pyarrow (and numpy, safetensors, tokenizers
that they bring). QLoRA needs bitsandbytes: without it QLoRA is skipped with a note. Bring it
as a wheel (`pip download --no-deps bitsandbytes -d wheels/` on a machine with the network)
and pass `--wheels wheels/`: the wheels there are unpacked into a temporary folder and put on
the import path (no pip needed). Runs from the repository root:

    python bench/gpu_check.py                      # on the GPU machine (--wheels DIR for QLoRA)
    python bench/gpu_check.py --tiny               # a small model on this CPU: the code path
    python bench/gpu_check.py --prepare            # rebuild the sample from the real data

The data is a committed sample (`bench/gpu_check_sample.parquet`, materialised examples of a
few datasets; `--prepare` rebuilds it from ../shared/genies-data), because the real data may
not exist on the GPU machine. The figures are those of random weights: speed and memory are
real, scores and losses mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLE = Path(__file__).with_name("gpu_check_sample.parquet")
# Scored test splits (long responses, long prompts, 4 responses per example, ...), the 5-shot
# dataset (its demonstrations overflow LLaMA-1's 2048 positions) and the training set (the
# longest responses of GENIES).
SCORE_DATASETS = ("alpaca_high_quality", "code_hard", "change_my_view", "us_history_textbook")
FEW_SHOT_DATASET = "code_hard"
TRAIN_DATASET = "alpaca_high_quality"
N_TEST, N_TRAIN, N_SHOTS = 48, 112, 5
LLAMA_7B = {
    "hidden_size": 4096,
    "num_layers": 32,
    "num_heads": 32,
    "num_kv_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
}
TINY = {**LLAMA_7B, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4}
TINY.update(intermediate_size=128, vocab_size=512)
GIB = 2**30


# ------------------------------------------------------------------------------- the sample


def prepare(genies_data: Path, out: Path) -> None:
    """Materialise the sample: test examples to score, train examples to train and demonstrate."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genies.data.materialise import load_split
    from genies.data.raw import RawData

    raw = RawData(genies_data)
    tables = [load_split(raw, d, "test").slice(0, N_TEST) for d in SCORE_DATASETS]
    tables.append(load_split(raw, TRAIN_DATASET, "train").slice(0, N_TRAIN))
    if FEW_SHOT_DATASET != TRAIN_DATASET:
        tables.append(load_split(raw, FEW_SHOT_DATASET, "train").slice(0, 16))
    table = pa.concat_tables(tables)
    pq.write_table(table, out, compression="zstd", compression_level=19)
    print(f"wrote {out}: {table.num_rows} examples, {out.stat().st_size / 1e6:.2f} MB")


def read_sample(path: Path) -> dict:
    """{(dataset, split): table} of the sample."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    parts = pc.split_pattern(table.column("example_id"), "/")
    keys = [(p[0].as_py(), p[1].as_py()) for p in parts]
    out = {}
    for key in dict.fromkeys(keys):
        rows = [i for i, k in enumerate(keys) if k == key]
        out[key] = table.take(rows)
    return out


# ------------------------------------------------------------------------------- set-up


def use_wheels(folder: Path) -> list[str]:
    """Unpack the wheels in `folder` into a temporary folder put first on the import path."""
    target = Path(tempfile.mkdtemp(prefix="gpu-check-wheels-"))
    names = []
    for wheel in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
        names.append(wheel.name)
    sys.path.insert(0, str(target))
    return names


def has_bitsandbytes() -> tuple[bool, str]:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a broken native library
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def build_llama(dims: dict, tokenizer, device, dtype, seed: int = 0):
    """The `tiny` source's Llama with `dims`, initialised on `device` in `dtype` directly."""
    import torch
    from transformers import LlamaForCausalLM

    from genies.models.tiny import tiny_config, tiny_params

    config = tiny_config(tiny_params({**dims, "seed": seed}), tokenizer)
    config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.manual_seed(seed)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def quantise_nf4(model, compute_dtype, device) -> None:
    """Replace the decoder's linear layers by bitsandbytes NF4 ones, in place, one at a time.

    What `load_model(..., quantization="nf4")` does while loading (double quantisation), here
    for weights that exist only in memory.
    """
    import bitsandbytes as bnb
    import torch

    from genies.forward.activations import decoder_layers

    for layer in decoder_layers(model):
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is not torch.nn.Linear:
                    continue
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=compute_dtype,
                    compress_statistics=True,
                    quant_type="nf4",
                    device="meta",
                )
                q.weight = bnb.nn.Params4bit(
                    child.weight.data,
                    requires_grad=False,
                    compress_statistics=True,
                    quant_type="nf4",
                )
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, q.to(device))
                del child
    model.is_loaded_in_4bit = True  # what peft looks for (QLoRA adapters, k-bit preparation)
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Stage:
    """Times a stage; its peak GPU memory (max_memory_allocated) and the peak above what was
    allocated when it started. On the CPU: the process's peak RSS (a rough figure: the peak of
    the whole run so far) and the same above the RSS at the start."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = _rss_bytes()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            import resource

            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.above = max(self.peak - self.start, 0)
        self.seconds = time.perf_counter() - self.t0
        return False


def _rss_bytes() -> int:
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------- stages


def score_stage(loaded, name: str, prompts, responses, args, plans, shots=None) -> dict:
    """Score one dataset like the forward job: context policy, per-head activations captured."""
    import numpy as np

    from genies.forward.activations import ActivationCapture
    from genies.forward.scoring import score_tokenized
    from genies.models.context import fit_examples, max_positions
    from genies.models.tokens import tokenize_examples

    tok, model, layout = loaded.tokenizer, loaded.model, loaded.layout
    prompt_ids, response_ids = tokenize_examples(tok, prompts, responses)
    limit = max_positions(model, tok)
    fit = fit_examples(prompt_ids, response_ids, limit, args.context_policy, tok.bos_token_id)
    n_rows = sum(map(len, response_ids))
    heads = np.zeros(
        (n_rows, layout["num_layers"], layout["num_heads"], layout["head_dim"]), np.float16
    )
    capture = ActivationCapture(model, layout["num_heads"])
    capture.target(heads=heads)
    budget = plans.budget(loaded)
    with Stage(loaded.device) as stage:
        result = score_tokenized(
            model,
            fit.prompt_ids,
            response_ids,
            batch_tokens=None,
            budget=budget,
            device=loaded.device,
            capture=capture,
            skip=fit.skipped,
        )
    capture.remove()
    scored = ~np.isnan(result.logprob_sum)
    if not np.abs(heads[scored]).max() > 0:
        raise RuntimeError(f"{name}: no activations were captured")
    row = {
        "stage": f"score {name}",
        "examples": len(prompts),
        "texts": n_rows,
        "tokens": result.tokens_processed,
        "seconds": stage.seconds,
        "tokens_per_s": result.tokens_processed / stage.seconds,
        "peak_bytes": stage.peak,
        "peak_above_start": stage.above,
        "planned_above_start": result.plan.get("planned_peak_bytes"),
        "resident_at_start": stage.start,
        "planned_weights": plans.weights(loaded),
        "budget": budget.describe(),
        "batch_tokens": result.plan.get("batch_tokens"),
        "backoffs": len(result.plan.get("backoffs", [])),
        "forward_calls": result.n_forward,
        **fit.summary(),
    }
    if shots is not None:
        row["shots_kept_mean"] = float(np.mean(shots))
        row["examples_with_fewer_shots"] = int(np.sum(shots < N_SHOTS))
    return row


def few_shot_inputs(eval_table, source_table, tokenizer, seed: int = 0):
    """5-shot prompts that fit (`genies.forward.baselines.fit_few_shot`) and the demonstrations
    kept."""
    import numpy as np

    from genies.forward.baselines import fit_few_shot
    from genies.models.context import max_positions, prompt_token_counter
    from genies.models.tokens import tokenize_examples

    src = source_table.select(["prompt", "responses", "preferred"]).to_pydict()
    pool = [(p, r[k]) for p, r, k in zip(*src.values(), strict=True)]
    cols = eval_table.select(["prompt", "responses"]).to_pydict()
    rng = np.random.default_rng(seed)
    demos = [
        [pool[j] for j in rng.choice(len(pool), N_SHOTS, replace=False)] for _ in cols["prompt"]
    ]
    _, response_ids = tokenize_examples(tokenizer, cols["prompt"], cols["responses"])
    longest = [max(map(len, rs)) for rs in response_ids]
    texts, kept = fit_few_shot(
        cols["prompt"],
        demos,
        prompt_token_counter(tokenizer),
        longest,
        max_positions(tokenizer=tokenizer),
    )
    return texts, cols["responses"], kept


def build_in_memory(loaded, params):
    """`genies.methods.tuned.reward_model.build_reward_model` around a model that exists only in
    memory.

    It loads its base from a folder with `load_model`; this hands it `loaded` instead, so the
    7B weights are never written to disk.
    """
    import genies.methods.tuned.reward_model as reward_model

    original = reward_model.load_model
    reward_model.load_model = lambda *args, **kwargs: loaded
    try:
        model, _ = reward_model.build_reward_model("(in memory)", params, 0, loaded.device)
    finally:
        reward_model.load_model = original
    return model


def train_stage(loaded, table, quantization, args, plans) -> dict:
    """A few LoRA (or QLoRA) steps of `args.batch_pairs` pairs under the memory plan."""
    import torch

    import genies.methods.tuned.reward_model as reward_model
    from genies.methods.tuned.training import resolve_params, train_step

    tok = loaded.tokenizer
    cols = table.select(["prompt", "responses", "preferred", "dispreferred"]).to_pydict()
    params = resolve_params(
        "lora",
        {"batch_size": args.batch_pairs, "dtype": str(loaded.dtype).removeprefix("torch.")},
    )
    params["quantization"] = quantization
    seqs, _ = reward_model.encode_examples(tok, cols["prompt"], cols["responses"], None)
    pairs = [
        (seqs[i][cols["preferred"][i]], seqs[i][cols["dispreferred"][i][0]])
        for i in range(len(seqs))
    ]
    need = args.batch_pairs * args.steps
    if len(pairs) < need:
        raise SystemExit(f"the sample has {len(pairs)} training pairs; {need} are needed")
    pairs = pairs[:need]
    model = build_in_memory(loaded, params)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params["lr"], weight_decay=0.0)
    model.train()
    plan, planned = plans.training(model, loaded, params, pairs)
    pad = reward_model.pad_id_of(tok)
    losses, step_seconds, tokens = [], [], 0
    with Stage(loaded.device) as stage:
        for step in range(args.steps):
            batch = pairs[step * args.batch_pairs : (step + 1) * args.batch_pairs]
            t0 = time.perf_counter()
            torch.manual_seed(step)  # LoRA dropout keys, as the training loop seeds them
            loss, n_tokens = train_step(
                model, optimizer, batch, plan, pad, loaded.device, params["max_grad_norm"]
            )
            if loaded.device.type == "cuda":
                torch.cuda.synchronize()
            step_seconds.append(time.perf_counter() - t0)
            losses.append(loss)
            tokens += n_tokens if step else 0
    timed = sum(step_seconds[1:]) if args.steps > 1 else step_seconds[0]
    timed_pairs = args.batch_pairs * max(args.steps - 1, 1)
    timed_tokens = tokens if args.steps > 1 else n_tokens
    del model, optimizer, trainable
    return {
        "stage": f"train {'qlora' if quantization else 'lora'}",
        "steps": args.steps,
        "pairs": args.batch_pairs * args.steps,
        "seconds": stage.seconds,
        "first_step_seconds": step_seconds[0],
        "pairs_per_s": timed_pairs / timed,
        "tokens_per_s": timed_tokens / timed,
        "peak_bytes": stage.peak,
        "peak_above_start": stage.above,
        "planned_above_start": planned,
        "resident_at_start": stage.start,
        "planned_weights": plans.weights(loaded),
        "losses": [round(x, 4) for x in losses],
        "plan": plan.record(),
    }


SPLIT_DIMS = {**TINY, "hidden_size": 256, "num_layers": 4, "intermediate_size": 512}


def multidevice_stage(tokenizer, device, prompts, responses) -> dict:
    """A small model spread over `device` and the CPU against the same model on `device` alone.

    On a GPU, layers alternate between cuda and the CPU (accelerate `dispatch_model` with the
    CPU as main device, so CPU layers really compute there): the KV cache, the activation
    hooks and the reward head meet tensors on two devices, as on several GPUs. On the CPU
    (--tiny) every block gets accelerate's hooks on one device. Scores, captured activations,
    and the loss and gradients of one training step must agree.
    """
    import copy

    import numpy as np
    import torch
    from accelerate import dispatch_model

    import genies.methods.tuned.reward_model as reward_model
    from genies.forward.activations import ActivationCapture
    from genies.forward.scoring import score_tokenized
    from genies.methods.tuned.training import resolve_params
    from genies.models.loading import LoadedModel, input_device
    from genies.models.tokens import tokenize_examples

    dims = {**SPLIT_DIMS, "vocab_size": max(len(tokenizer), 512)}
    base = build_llama(dims, tokenizer, "cpu", torch.float32, seed=1)
    if device.type == "cuda":
        index = device.index or 0
        device_map = {"model.embed_tokens": index, "model.rotary_emb": index, "lm_head": index}
        device_map.update({f"model.layers.{i}": index if i % 2 else "cpu" for i in range(4)})
        device_map["model.norm"] = "cpu"
    else:
        device_map = {name: "cpu" for name in ("model.embed_tokens", "model.rotary_emb")}
        device_map.update({f"model.layers.{i}": "cpu" for i in range(4)})
        device_map.update({"model.norm": "cpu", "lm_head": "cpu"})
    split = dispatch_model(copy.deepcopy(base), device_map, main_device="cpu", force_hooks=True)
    single = base.to(device)
    prompt_ids, response_ids = tokenize_examples(tokenizer, prompts, responses)
    prompt_ids = [p[-256:] for p in prompt_ids]  # short texts: this is about devices
    response_ids = [[r[-64:] for r in rs] for rs in response_ids]
    params = resolve_params("lora", {"dtype": "float32", "lora_r": 4, "lora_dropout": 0.0})
    out = {}
    for name, model in (("single", single), ("split", split)):
        dev = input_device(model)
        n_rows = sum(map(len, response_ids))
        heads = np.zeros((n_rows, 4, dims["num_heads"], 256 // dims["num_heads"]), np.float16)
        capture = ActivationCapture(model, dims["num_heads"])
        capture.target(heads=heads)
        scores = score_tokenized(
            model, prompt_ids, response_ids, batch_tokens=256, device=dev, capture=capture
        )
        capture.remove()
        rm = build_in_memory(LoadedModel(model, tokenizer, dev, torch.float32), params)
        rm.train()
        seqs = [p + rs[0] for p, rs in zip(prompt_ids, response_ids, strict=True)]
        seqs += [p + rs[1] for p, rs in zip(prompt_ids, response_ids, strict=True)]
        ids, mask = reward_model.collate(seqs, reward_model.pad_id_of(tokenizer), dev)
        rewards = rm(ids, mask)
        half = len(seqs) // 2
        loss = reward_model.preference_loss(rewards[:half], rewards[half:])
        loss.backward()
        grads = {n: p.grad.detach().cpu() for n, p in rm.named_parameters() if p.requires_grad}
        out[name] = (scores.logprob_sum, heads, loss.item(), grads)
    (s1, h1, l1, g1), (s2, h2, l2, g2) = out["single"], out["split"]
    differences = {
        "scores": float(np.max(np.abs(s1 - s2))),
        "heads": float(np.max(np.abs(h1.astype(np.float32) - h2.astype(np.float32)))),
        "loss": abs(l1 - l2),
        "grads": max(float((g1[k] - g2[k]).abs().max()) for k in g1),
    }
    agree = (
        differences["scores"] < 1e-2
        and differences["heads"] < 1e-2
        and differences["loss"] < 1e-4
        and set(g1) == set(g2)
        and differences["grads"] < 1e-3 * max(float(g.abs().max()) for g in g1.values())
    )
    return {
        "stage": "split over devices",
        "device_map": {k: str(v) for k, v in device_map.items()},
        "max_differences": differences,
        "agree": agree,
    }


class Plans:
    """The stages' memory plans, made as the jobs make them (`genies.models.memory`).

    The budget is the free GPU memory after loading less `margin_gb` (on the CPU:
    `--budget-gb`, so that the smoke run plans too). Planned figures are working memory above
    what is resident when the stage starts (the weights, and the adapters when training).
    """

    def __init__(self, budget_gb):
        self.settings = {"budget_gb": budget_gb}

    def budget(self, loaded):
        from genies.models.memory import Budget

        return Budget.resolve(self.settings, loaded.device, 1, loaded.model)

    def weights(self, loaded) -> int:
        """Planned bytes of the loaded weights (`genies.models.memory.Shape.weight_bytes`)."""
        from genies.models.memory import Shape, dtype_bytes

        shape = Shape.of(loaded.model)
        return shape.weight_bytes(dtype_bytes(loaded.dtype), loaded.quantization)

    def training(self, model, loaded, params, pairs):
        """(plan, planned peak bytes of the steps): `genies.methods.tuned.training.memory_plan`."""
        from genies.methods.tuned.training import memory_plan

        plan = memory_plan(model, params, self.budget(loaded), pairs)
        batch = params["batch_size"]
        steps = [pairs[s : s + batch] for s in range(0, len(pairs), batch)]
        planned = max(
            plan.planned_step_bytes([max(len(c), len(r)) for c, r in step]) for step in steps
        )
        return plan, planned


# ------------------------------------------------------------------------------- main


GIB_KEYS = ("resident_at_start", "planned_weights")


def _gib(n) -> str:
    return f"{n / GIB:.2f}G"


def report(rows: list[dict], device) -> None:
    """The figures as a table: peak memory in total and above the stage's start, and plan."""
    unit = "GPU" if device.type == "cuda" else "RSS"
    print(
        f"\n{'stage':<26} {'s':>6} {'tokens/s':>9} {'pairs/s':>8} {'peak ' + unit:>9} "
        f"{'above start':>11} {'planned':>8}  notes"
    )
    keys = ("resident_at_start", "planned_weights",
            "examples_cut", "examples_skipped", "shots_kept_mean", "examples_with_fewer_shots",
            "batch_tokens", "budget", "backoffs", "plan", "losses", "skipped_because",
            "max_differences", "agree")  # fmt: skip
    for row in rows:
        planned = row.get("planned_above_start")
        peak, above = row.get("peak_bytes", 0) / GIB, row.get("peak_above_start", 0) / GIB
        notes = {k: _gib(row[k]) if k in GIB_KEYS else row[k] for k in keys if k in row}
        print(
            f"{row['stage']:<26} {row.get('seconds', 0):>6.1f} "
            f"{row.get('tokens_per_s', 0):>9.0f} {row.get('pairs_per_s', 0):>8.2f} "
            f"{peak:>8.2f}G {above:>10.2f}G "
            f"{(f'{planned / GIB:.2f}G' if planned else '-'):>8}  {notes}"
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="rebuild the sample and stop")
    ap.add_argument("--genies-data", type=Path, default=ROOT.parent / "shared" / "genies-data")
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument("--tiny", action="store_true", help="small dimensions on the CPU (smoke)")
    ap.add_argument("--wheels", type=Path, help="folder of wheels to import (bitsandbytes)")
    ap.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    ap.add_argument("--examples", type=int, default=None, help="examples per scored dataset")
    ap.add_argument("--steps", type=int, default=3, help="training steps (the first is warm-up)")
    ap.add_argument("--batch-pairs", type=int, default=32)
    ap.add_argument("--context-policy", default="cut_prompt", choices=("cut_prompt", "skip"))
    ap.add_argument("--budget-s", type=float, default=420, help="skip stages after this")
    ap.add_argument(
        "--budget-gb",
        type=float,
        default=None,
        help="memory.budget_gb (default: the GPU's free memory; with --tiny 0.25)",
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(args.genies_data, args.sample)
        return 0
    t_start = time.perf_counter()
    if args.wheels:
        print("wheels:", use_wheels(args.wheels))
    import numpy as np
    import torch
    import transformers

    from genies.models.loading import LoadedModel
    from genies.models.tiny import train_tiny_tokenizer

    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --tiny for the CPU smoke check")
    dims = TINY if args.tiny else LLAMA_7B
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    n_examples = args.examples or (6 if args.tiny else N_TEST)
    bnb_ok, bnb_why = has_bitsandbytes()
    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpu_memory_gib": (
            round(torch.cuda.get_device_properties(device).total_memory / GIB, 1)
            if device.type == "cuda"
            else None
        ),
        "bitsandbytes": bnb_ok,
        "model": dims,
        "dtype": str(dtype),
    }
    print(json.dumps(env))
    sample = read_sample(args.sample)
    texts = [
        t
        for table in sample.values()
        for p, rs in zip(
            table.column("prompt").to_pylist(), table.column("responses").to_pylist(), strict=True
        )
        for t in (p, *rs)
    ]
    t0 = time.perf_counter()
    tokenizer = train_tiny_tokenizer(dims["vocab_size"], corpus=texts)
    tokenizer.model_max_length = dims["max_position_embeddings"]
    print(f"tokenizer: {len(tokenizer)} entries, trained in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    model = build_llama(dims, tokenizer, device, dtype)
    loaded = LoadedModel(model, tokenizer, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e9:.2f} B parameters on {device}, built in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    plans = Plans(args.budget_gb if args.budget_gb or not args.tiny else 0.25)
    rows = []

    def over_budget(stage: str) -> bool:
        late = time.perf_counter() - t_start > args.budget_s
        if late:
            rows.append({"stage": stage, "skipped_because": f"over --budget-s {args.budget_s}"})
        return late

    for name in SCORE_DATASETS:
        if over_budget(f"score {name}"):
            continue
        table = sample[(name, "test")].slice(0, n_examples)
        cols = table.select(["prompt", "responses"]).to_pydict()
        rows.append(score_stage(loaded, name, cols["prompt"], cols["responses"], args, plans))
        print(rows[-1])
    if not over_budget(f"score {FEW_SHOT_DATASET} {N_SHOTS}-shot"):
        prompts, responses, kept = few_shot_inputs(
            sample[(FEW_SHOT_DATASET, "test")].slice(0, n_examples),
            sample[(FEW_SHOT_DATASET, "train")],
            tokenizer,
        )
        name = f"{FEW_SHOT_DATASET} {N_SHOTS}-shot"
        rows.append(score_stage(loaded, name, prompts, responses, args, plans, shots=kept))
        print(rows[-1])
    if not over_budget("split over devices"):
        table = sample[(SCORE_DATASETS[0], "test")].slice(0, 4)
        cols = table.select(["prompt", "responses"]).to_pydict()
        rows.append(multidevice_stage(tokenizer, device, cols["prompt"], cols["responses"]))
        print(rows[-1])
    train_table = sample[(TRAIN_DATASET, "train")]
    if not over_budget("train lora"):
        rows.append(train_stage(loaded, train_table, None, args, plans))
        print(rows[-1])
    if not bnb_ok:
        rows.append({"stage": "train qlora", "skipped_because": f"no bitsandbytes ({bnb_why})"})
        print("QLoRA skipped: bitsandbytes is not importable; bring its wheel with --wheels DIR")
    elif not over_budget("train qlora"):
        del loaded, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = build_llama(dims, tokenizer, device, dtype)
        quantise_nf4(model, dtype, device)
        loaded = LoadedModel(model, tokenizer, device, dtype, quantization="nf4")
        rows.append(train_stage(loaded, train_table, "nf4", args, plans))
        print(rows[-1])
    report(rows, device)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "stages": rows}, indent=2, default=float))
    bad = [r for r in rows if "peak_bytes" in r and not np.isfinite(r.get("tokens_per_s", 0))]
    bad += [r for r in rows if r.get("agree") is False]
    if bad:
        print("FAILED:", [r["stage"] for r in bad])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
