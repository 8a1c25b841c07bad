"""Prepared GPU check of the paper-scale path (issues 10, 19) on ONE H100/H200, in under 8 minutes.

It builds a random-weight Llama with 7B dimensions (the `tiny` source scaled up: 32 layers,
hidden 4096, 32 heads, intermediate 11008, vocabulary 32000, 2048 positions) directly on the
GPU in bfloat16 (nothing written to disk), with a byte-level BPE tokenizer of 32,000 entries
trained on the sample's texts, and runs these stages, each reported as passed, failed (with its
error) or skipped; a failed stage does not stop the others:

1. `score <dataset>`: a few real GENIES datasets scored like the forward job (the context policy
   applied, the per-head activations of every layer captured), plus one 5-shot dataset whose
   demonstrations must be dropped to fit 2048 positions;
2. `split: ...`: a small model spread like a model over several GPUs: the embeddings and the
   first half of the layers on the GPU, the other half, the final norm and the head on the CPU,
   every block with accelerate's hooks and nothing offloaded (`tests/fakedev.py`'s
   `split_map` and `attach_hooks`), so that a mask, index or position made on the input device
   meets hidden states on another device, as on a real two-GPU map. Scoring with activation
   capture, one LoRA training step and an own (sequence-classifier) reward model must give
   the results of the same model on the GPU alone;
3. `score own reward model`: a sequence classifier on the 7B decoder scores a dataset under
   the memory plan, as the score_reward_model job does;
4. `train lora` / `train qlora`: a few training steps of 32 pairs (NF4 base for QLoRA) as the
   tune job runs them: under the memory plan and, with `deterministic: true`, in the math
   attention kernel (`genies.methods.tuned.training.training_kernels`);
5. `deterministic training`: the LoRA steps again from the same initial weights; the trained
   weights must be equal bit for bit, and every "does not have a deterministic implementation"
   warning is recorded.

Memory: for every stage with a plan, the planned working memory is compared with the peak of
`torch.cuda.max_memory_allocated` above what was allocated when the stage started, and the
planned figure times the allocator's overhead (`genies.models.memory.ALLOCATOR_OVERHEAD`) with
the peak of `torch.cuda.max_memory_reserved` above its start: either off by more than 25%
(`MEMORY_TOLERANCE`) fails the stage.

The report goes to `--json` (default gpu_check_report.json) and the exit status is 1 when a stage
failed. Needs only torch, transformers, peft, accelerate, pyarrow (and numpy, safetensors,
tokenizers that they bring). QLoRA needs bitsandbytes: without it that stage is skipped with a
note. Bring it as a wheel (`pip download --no-deps bitsandbytes -d wheels/` on a machine with the
network) and pass `--wheels wheels/`: the wheels there are unpacked into a temporary folder and
put on the import path (no pip needed). Runs from the repository root:

    python bench/gpu_check.py                      # on the GPU machine (--wheels DIR for QLoRA)
    python bench/gpu_check.py --tiny               # a small model on this CPU: the code path
    python bench/gpu_check.py --prepare            # rebuild the sample from the real data

With `--tiny` on a CPU the split stages spread the model over a pretend GPU (`fakegpu:0` of
tests/fakedev.py, real arithmetic on the CPU, PyTorch's device rules) and the CPU, so that the
same stage code catches the same bugs without a GPU; memory figures are not compared there.
The data is a committed sample (`bench/gpu_check_sample.parquet`, materialised examples of a few
datasets; `--prepare` rebuilds it from ../shared/genies-data), because the real data may not
exist on the GPU machine. The figures are those of random weights: speed and memory are real,
scores and losses mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
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
# the split stages' small model (two KV heads per query head: the GQA path)
SPLIT_DIMS = {**TINY, "hidden_size": 256, "num_layers": 4, "num_heads": 8, "num_kv_heads": 4}
SPLIT_DIMS["intermediate_size"] = 512
GIB = 2**30
# A planned figure more than this far from the measured one fails the stage.
MEMORY_TOLERANCE = 0.25
NOT_DETERMINISTIC = "does not have a deterministic implementation"


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
    """Times a stage and measures its memory. On CUDA: the peaks of
    torch.cuda.max_memory_allocated and max_memory_reserved, in total and above what was
    allocated and reserved when the stage started (the cache emptied first). On the CPU: the
    process's peak RSS (a rough figure: the peak of the whole run so far) and the same above
    the RSS at the start."""

    def __init__(self, device):
        self.device = device
        self.reserved_above = None

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            self.reserved_start = torch.cuda.memory_reserved()
        else:
            self.start = _rss_bytes()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            self.reserved_above = max(torch.cuda.max_memory_reserved() - self.reserved_start, 0)
        else:
            import resource

            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.above = max(self.peak - self.start, 0)
        self.seconds = time.perf_counter() - self.t0
        return False

    def figures(self) -> dict:
        return {
            "seconds": self.seconds,
            "peak_bytes": self.peak,
            "peak_above_start": self.above,
            "reserved_above_start": self.reserved_above,
            "resident_at_start": self.start,
        }


def _rss_bytes() -> int:
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def compare_memory(planned, allocated, reserved, overhead: float) -> list[str]:
    """What is wrong with a stage's plan: the allocated peak above the start against the
    planned bytes, and the reserved peak above the start against the planned bytes times the
    allocator's overhead; each more than `MEMORY_TOLERANCE` off is a problem ([]: none)."""
    problems = []
    for what, measured, expected in (
        ("allocated", allocated, planned),
        ("reserved", reserved, None if planned is None else planned * overhead),
    ):
        if measured is None or not expected:
            continue
        off = measured / expected - 1
        if abs(off) > MEMORY_TOLERANCE:
            problems.append(
                f"peak {what} above the start {measured / GIB:.2f} GiB is {off:+.0%} of the "
                f"planned {expected / GIB:.2f} GiB (tolerance {MEMORY_TOLERANCE:.0%})"
            )
    return problems


class Report:
    """The stages' rows: each passed, failed (with its error) or skipped; run them all."""

    def __init__(self, device, time_limit_s: float, t_start: float | None = None):
        """`time_limit_s`: no stage starts later than this after `t_start` (default: now)."""
        self.device, self.rows = device, []
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.time_limit_s = time_limit_s

    def run(self, name: str, stage, *args, **kwargs) -> dict:
        """Run `stage(*args, **kwargs)` (it returns its figures) unless the time is up; an
        error fails this stage only. Planned memory is compared with the measured on CUDA."""
        t0 = time.perf_counter()
        if t0 - self.t_start > self.time_limit_s:
            return self.skip(name, f"over --budget-s {self.time_limit_s:.0f}")
        try:
            row = {"stage": name, "status": "passed", **stage(*args, **kwargs)}
        except Exception as exc:  # noqa: BLE001 - a failed stage must not stop the others
            row = {
                "stage": name,
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=-6),
            }
        row.setdefault("seconds", time.perf_counter() - t0)
        problems = list(row.pop("problems", []))
        if self.device.type == "cuda" and "planned_above_start" in row:
            from genies.models.memory import ALLOCATOR_OVERHEAD

            problems += compare_memory(
                row["planned_above_start"],
                row.get("peak_above_start"),
                row.get("reserved_above_start"),
                ALLOCATOR_OVERHEAD["cuda"],
            )
        if problems:
            row["status"] = "failed"
            row["error"] = "; ".join(filter(None, [row.get("error"), *problems]))
        return self._add(row)

    def skip(self, name: str, why: str) -> dict:
        return self._add({"stage": name, "status": "skipped", "skipped_because": why})

    def _add(self, row: dict) -> dict:
        self.rows.append(row)
        shown = {k: v for k, v in row.items() if k != "traceback"}
        print(json.dumps(shown, default=str), flush=True)
        return row

    def failed(self) -> list[str]:
        return [r["stage"] for r in self.rows if r["status"] == "failed"]

    def finish(self, env: dict, path: Path) -> int:
        """Print the table, write the JSON report to `path`; the exit status (1: a failure)."""
        print_table(self.rows, self.device)
        total = time.perf_counter() - self.t_start
        print(f"\ntotal {total:.0f} s")
        failed = self.failed()
        result = {"env": env, "seconds": total, "failed": failed, "stages": self.rows}
        path.write_text(json.dumps(result, indent=2, default=float))
        print(f"report: {path}")
        if failed:
            print("FAILED:", failed)
        return 1 if failed else 0


# ------------------------------------------------------------------------------- stages


def score_stage(loaded, prompts, responses, args, plans, shots=None) -> dict:
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
    try:
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
    finally:
        capture.remove()
    scored = ~np.isnan(result.logprob_sum)
    if not np.abs(heads[scored]).max() > 0:
        raise RuntimeError("no activations were captured")
    row = {
        "examples": len(prompts),
        "texts": n_rows,
        "tokens": result.tokens_processed,
        "tokens_per_s": result.tokens_processed / stage.seconds,
        **stage.figures(),
        "planned_above_start": result.plan.get("planned_peak_bytes"),
        "planned_weights": plans.weights(loaded),
        "budget": budget.describe(),
        "batch_tokens": result.plan.get("batch_tokens"),
        "backoffs": len(result.plan.get("backoffs", [])),
        "forward_calls": result.n_forward,
        **fit.summary(),
    }
    if not np.all(np.isfinite(result.logprob_sum[scored])):
        row["problems"] = ["non-finite scores"]
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


def training_pairs(tokenizer, table, n: int):
    """The first `n` (preferred, first dispreferred) pairs of `table`, tokenised for training."""
    import genies.methods.tuned.reward_model as reward_model

    cols = table.select(["prompt", "responses", "preferred", "dispreferred"]).to_pydict()
    seqs, _ = reward_model.encode_examples(tokenizer, cols["prompt"], cols["responses"], None)
    pairs = [
        (seqs[i][cols["preferred"][i]], seqs[i][cols["dispreferred"][i][0]])
        for i in range(len(seqs))
    ]
    if len(pairs) < n:
        raise RuntimeError(f"the sample has {len(pairs)} training pairs; {n} are needed")
    return pairs[:n]


def train_steps(model, params, plan, pairs, loaded, args) -> dict:
    """`args.steps` steps of `args.batch_pairs` pairs from fresh AdamW state, as the tune job
    runs them (deterministic algorithms and the math attention kernel for deterministic
    training on CUDA); the steps' losses and times, and the warnings about non-deterministic
    ops."""
    import torch

    from genies.methods.tuned.reward_model import pad_id_of
    from genies.methods.tuned.training import prepare_determinism, train_step, training_kernels

    prepare_determinism(params, loaded.device)  # as the tune job does before its first step
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params["lr"], weight_decay=0.0)
    model.train()
    pad = pad_id_of(loaded.tokenizer)
    losses, seconds, tokens = [], [], []
    with (
        warnings.catch_warnings(record=True) as caught,
        training_kernels(params, loaded.device),
    ):
        warnings.simplefilter("always")
        for step in range(args.steps):
            batch = pairs[step * args.batch_pairs : (step + 1) * args.batch_pairs]
            t0 = time.perf_counter()
            torch.manual_seed(step)  # LoRA dropout keys, as the training loop seeds them
            loss, n_tokens = train_step(
                model, optimizer, batch, plan, pad, loaded.device, params["max_grad_norm"]
            )
            if loaded.device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
            losses.append(loss)
            tokens.append(n_tokens)
    for w in caught:  # shown as usual, and the non-deterministic ops remembered
        if NOT_DETERMINISTIC not in str(w.message):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    messages = {str(w.message) for w in caught}
    nondeterministic = sorted(m for m in messages if NOT_DETERMINISTIC in m)
    del optimizer
    return {"losses": losses, "seconds": seconds, "tokens": tokens, "warnings": nondeterministic}


def train_stage(loaded, table, quantization, args, plans, kept=None) -> dict:
    """A few LoRA (or QLoRA) steps of `args.batch_pairs` pairs under the memory plan, as the
    tune job runs them. `kept` (a dict) receives what the determinism stage needs."""
    from genies.methods.tuned.reward_model import trainable_tensors
    from genies.methods.tuned.training import math_attention, resolve_params

    params = resolve_params(
        "lora",
        {"batch_size": args.batch_pairs, "dtype": str(loaded.dtype).removeprefix("torch.")},
    )
    params["quantization"] = quantization
    pairs = training_pairs(loaded.tokenizer, table, args.batch_pairs * args.steps)
    model = build_in_memory(loaded, params)
    initial = trainable_tensors(model)
    plan, planned = plans.training(model, loaded, params, pairs)
    with Stage(loaded.device) as stage:
        run = train_steps(model, params, plan, pairs, loaded, args)
    if kept is not None:
        kept.update(model=model, params=params, plan=plan, pairs=pairs, initial=initial,
                    trained=trainable_tensors(model), warnings=run["warnings"])  # fmt: skip
    timed = run["seconds"][1:] or run["seconds"]  # the first step warms up
    return {
        "steps": args.steps,
        "pairs": len(pairs),
        **stage.figures(),
        "first_step_seconds": run["seconds"][0],
        "pairs_per_s": args.batch_pairs * len(timed) / sum(timed),
        "tokens_per_s": sum(run["tokens"][-len(timed) :]) / sum(timed),
        "planned_above_start": planned,
        "planned_weights": plans.weights(loaded),
        "losses": [round(x, 4) for x in run["losses"]],
        "math_attention": math_attention(params, loaded.device),
        "nondeterministic_warnings": run["warnings"],
        "plan": plan.record(),
    }


def determinism_stage(kept: dict, loaded, args) -> dict:
    """The LoRA steps of `train_stage` again, from the same initial weights: the trained
    weights must be equal bit for bit (deterministic training, `genies.methods.tuned.training`)."""
    import torch

    from genies.methods.tuned.reward_model import load_trainable, trainable_tensors

    if not kept:
        raise RuntimeError("the LoRA training stage did not finish: nothing to train again")
    model, params = kept["model"], kept["params"]
    load_trainable(model, kept["initial"])
    run = train_steps(model, params, kept["plan"], kept["pairs"], loaded, args)
    again = trainable_tensors(model)
    first = kept["trained"]
    differ = sorted(name for name in first if not torch.equal(first[name], again[name]))
    max_difference = max(
        (float((first[n].float() - again[n].float()).abs().max()) for n in differ), default=0.0
    )
    row = {
        "deterministic": params["deterministic"],
        "tensors": len(first),
        "tensors_not_bitwise_equal": len(differ),
        "max_difference": max_difference,
        "nondeterministic_warnings": sorted(set(kept["warnings"]) | set(run["warnings"])),
    }
    if differ:
        row["problems"] = [
            f"{len(differ)} of {len(first)} trained tensors differ between two identical "
            f"trainings (e.g. {differ[0]}, by up to {max_difference:.3g})"
        ]
    return row


def classifier_stage(loaded, table, args, plans) -> dict:
    """A sequence classifier on the loaded decoder (its weights shared, a fresh score head)
    scores a dataset under the memory plan, as the score_reward_model job does."""
    import numpy as np
    import torch
    from transformers import LlamaForSequenceClassification

    from genies.methods.reward_classifier import ClassifierReward, classifier_rewards

    config = copy.deepcopy(loaded.model.config)
    config.num_labels = 1
    with torch.device("meta"):
        classifier = LlamaForSequenceClassification(config)
    classifier.model = loaded.model.model
    classifier.score = torch.nn.Linear(
        config.hidden_size, 1, bias=False, device=loaded.device, dtype=loaded.dtype
    )
    budget = plans.budget(loaded)
    with Stage(loaded.device) as stage:
        scores = classifier_rewards(
            ClassifierReward(classifier.eval()),
            loaded.tokenizer,
            table,
            batch_tokens=args.reward_batch_tokens,
            device=loaded.device,
            context_policy=args.context_policy,
            label="gpu check",
            budget=budget,
        )
    plan = next(e for e in budget.events if e["kind"] == "reward scoring")
    rewards = scores.column("reward").to_numpy()
    texts = len(rewards)
    row = {
        "examples": table.num_rows,
        "texts": texts,
        "texts_per_s": texts / stage.seconds,
        **stage.figures(),
        "planned_above_start": plan["planned_peak_bytes"],
        "budget": budget.describe(),
        "eval_rows": plan["eval_rows"],
        "backoffs": sum(e["kind"] == "backoff" for e in budget.events),
    }
    if not np.all(np.isfinite(rewards[~scores.column("skipped").to_numpy()])):
        row["problems"] = ["non-finite rewards"]
    return row


# ------------------------------------------------------------------------------- split stages


class SplitDevices:
    """Where the split stages put the two halves of a model: on a GPU, that GPU and the CPU; on
    a CPU, a pretend GPU of tests/fakedev.py (`fakegpu:0`) and the CPU, inside its context."""

    def __init__(self, device):
        import torch

        self.cpu = torch.device("cpu")
        self.note = None
        if device.type == "cuda":
            self.first, self.context = device, contextlib.nullcontext
            return
        from tests import fakedev

        if fakedev.UNAVAILABLE:  # the same code on the CPU alone: no device bug can show
            self.first, self.context = self.cpu, contextlib.nullcontext
            self.note = fakedev.UNAVAILABLE
        else:
            self.first, self.context = fakedev.FakeDevices.devices(1)[0], fakedev.FakeDevices

    def place(self, model, split: bool) -> dict:
        """`model` on the first device, or `split` over both (embeddings on the first, the
        final norm and the head on the CPU), every block with accelerate's hooks, nothing
        offloaded; returns the device map."""
        from tests.fakedev import attach_hooks, split_map

        if not split:
            model.to(self.first)
            return {"": str(self.first)}
        device_map = split_map(model, self.first, self.cpu)
        attach_hooks(model, device_map)
        return device_map

    def describe(self, device_map) -> dict:
        row = {"device_map": device_map}
        if self.note:
            row["note"] = self.note
        return row


def _split_inputs(tokenizer, table):
    from genies.models.tokens import tokenize_examples

    cols = table.select(["prompt", "responses"]).to_pydict()
    prompt_ids, response_ids = tokenize_examples(tokenizer, cols["prompt"], cols["responses"])
    prompt_ids = [p[:1] + p[1:][-255:] for p in prompt_ids]  # short texts: this is about devices
    response_ids = [[r[-64:] for r in rs] for rs in response_ids]
    return prompt_ids, response_ids


def _differences(problems: list, what: str, a, b, tolerance: float) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        problems.append(f"{what}: shapes {a.shape} and {b.shape}")
        return float("inf")
    difference = float(np.max(np.abs(a - b))) if a.size else 0.0
    if not difference <= tolerance:
        problems.append(f"{what} differ by {difference:.3g} (tolerance {tolerance:.3g})")
    return difference


def split_scoring_stage(devices: SplitDevices, tokenizer, table) -> dict:
    """Scores and captured activations (heads, residual stream) of a model spread over two
    devices against the same model on one."""
    import numpy as np
    import torch

    from genies.forward.activations import ActivationCapture
    from genies.forward.scoring import score_tokenized

    prompt_ids, response_ids = _split_inputs(tokenizer, table)
    dims = {**SPLIT_DIMS, "vocab_size": max(len(tokenizer), 512)}
    base = build_llama(dims, tokenizer, "cpu", torch.float32, seed=1)
    head_dim = dims["hidden_size"] // dims["num_heads"]
    n_rows = sum(map(len, response_ids))
    out = {}
    for split in (False, True):
        model = copy.deepcopy(base)
        heads = np.zeros((n_rows, dims["num_layers"], dims["num_heads"], head_dim), np.float16)
        resid = np.zeros((n_rows, dims["num_layers"], dims["hidden_size"]), np.float16)
        with devices.context():
            device_map = devices.place(model, split)
            capture = ActivationCapture(model, dims["num_heads"])
            capture.target(heads=heads, resid=resid)
            try:
                scores = score_tokenized(
                    model, prompt_ids, response_ids, batch_tokens=256, device=devices.first,
                    capture=capture,
                )  # fmt: skip
            finally:
                capture.remove()
        out[split] = (scores.logprob_sum, heads, resid, scores.n_forward)
    problems = []
    differences = {
        name: _differences(problems, name, out[True][i], out[False][i], tolerance)
        for i, name, tolerance in ((0, "scores", 1e-2), (1, "heads", 1e-2), (2, "resid", 1e-2))
    }
    if not np.abs(out[False][1]).max() > 0 or not np.abs(out[False][2]).max() > 0:
        problems.append("no activations were captured")
    return {
        **devices.describe(device_map),
        "texts": n_rows,
        "forward_calls": out[True][3],
        "max_differences": differences,
        "problems": problems,
    }


def split_training_stage(devices: SplitDevices, tokenizer, table) -> dict:
    """One LoRA training step (dropout on) of a reward model whose LM is spread over two
    devices against the same step on one: loss and trained weights."""
    import torch

    from genies.methods.tuned.reward_model import pad_id_of
    from genies.methods.tuned.training import resolve_params, train_step
    from genies.models.loading import LoadedModel

    prompt_ids, response_ids = _split_inputs(tokenizer, table)
    pairs = [(p + rs[0], p + rs[1]) for p, rs in zip(prompt_ids, response_ids, strict=True)]
    dims = {**SPLIT_DIMS, "vocab_size": max(len(tokenizer), 512)}
    base = build_llama(dims, tokenizer, "cpu", torch.float32, seed=1)
    params = resolve_params("lora", {"dtype": "float32", "lora_r": 4, "lora_dropout": 0.1})
    out = {}
    for split in (False, True):
        model = copy.deepcopy(base)
        with devices.context():
            device_map = devices.place(model, split)
            loaded = LoadedModel(model, tokenizer, devices.first, torch.float32)
            reward_model = build_in_memory(loaded, params)
            trainable = [p for p in reward_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.0)
            reward_model.train()
            torch.manual_seed(0)  # the step's dropout keys
            loss, _ = train_step(
                reward_model, optimizer, pairs, len(pairs), pad_id_of(tokenizer),
                devices.first, params["max_grad_norm"],
            )  # fmt: skip
            after = {
                n: p.detach().cpu().clone()
                for n, p in reward_model.named_parameters()
                if p.requires_grad
            }
        out[split] = (loss, after)
    problems = []
    (loss_1, after_1), (loss_2, after_2) = out[False], out[True]
    if after_1.keys() != after_2.keys():
        problems.append("the trainable tensors differ in name")
    moved = max(float((after_1[n] - after_2[n]).abs().max()) for n in after_1 if n in after_2)
    differences = {
        "loss": _differences(problems, "losses", [loss_1], [loss_2], 1e-4),
        "trained_weights": moved,
    }
    if moved > 1e-4:
        problems.append(f"trained weights differ by {moved:.3g} (tolerance 1e-4)")
    return {
        **devices.describe(device_map),
        "pairs": len(pairs),
        "lora_dropout": params["lora_dropout"],
        "max_differences": differences,
        "problems": problems,
    }


def split_classifier_stage(devices: SplitDevices, tokenizer, table) -> dict:
    """An own reward model (a sequence classifier) spread over two devices against the same
    model on one: the rewards of `table`'s responses."""
    import torch
    from transformers import LlamaForSequenceClassification

    from genies.methods.reward_classifier import ClassifierReward, classifier_rewards
    from genies.models.tiny import tiny_config, tiny_params

    dims = {**SPLIT_DIMS, "vocab_size": max(len(tokenizer), 512), "seed": 2}
    config = tiny_config(tiny_params(dims), tokenizer)
    config.num_labels = 1
    config._attn_implementation = "sdpa"
    torch.manual_seed(2)
    base = LlamaForSequenceClassification(config).eval()
    out = {}
    for split in (False, True):
        classifier = copy.deepcopy(base)
        with devices.context():
            device_map = devices.place(classifier, split)
            scores = classifier_rewards(
                ClassifierReward(classifier), tokenizer, table, batch_tokens=512,
                device=devices.first, label="split check",
            )  # fmt: skip
        out[split] = scores.column("reward").to_numpy()
    problems = []
    difference = _differences(problems, "rewards", out[True], out[False], 1e-3)
    return {
        **devices.describe(device_map),
        "texts": len(out[True]),
        "max_differences": {"rewards": difference},
        "problems": problems,
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


def print_table(rows: list[dict], device) -> None:
    """The figures as a table: status, peak memory in total and above the stage's start, plan."""
    unit = "GPU" if device.type == "cuda" else "RSS"
    print(
        f"\n{'stage':<30} {'status':<7} {'s':>6} {'tokens/s':>9} {'pairs/s':>8} "
        f"{'peak ' + unit:>9} {'above start':>11} {'planned':>8}  notes"
    )
    keys = ("error", "skipped_because", "resident_at_start", "planned_weights",
            "reserved_above_start", "examples_cut", "examples_skipped", "shots_kept_mean",
            "examples_with_fewer_shots",
            "batch_tokens", "budget", "backoffs", "eval_rows", "losses", "max_differences",
            "tensors_not_bitwise_equal", "nondeterministic_warnings", "note")  # fmt: skip
    for row in rows:
        planned = row.get("planned_above_start")
        peak = (row.get("peak_bytes") or 0) / GIB
        above = (row.get("peak_above_start") or 0) / GIB
        notes = {
            k: _gib(row[k]) if k in GIB_KEYS or k == "reserved_above_start" else row[k]
            for k in keys
            if row.get(k) not in (None, [], "")
        }
        print(
            f"{row['stage']:<30} {row['status']:<7} {row.get('seconds', 0):>6.1f} "
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
    ap.add_argument("--reward-batch-tokens", type=int, default=16384)
    ap.add_argument("--context-policy", default="cut_prompt", choices=("cut_prompt", "skip"))
    ap.add_argument("--budget-s", type=float, default=420, help="skip stages after this")
    ap.add_argument(
        "--budget-gb",
        type=float,
        default=None,
        help="memory.budget_gb (default: the GPU's free memory; with --tiny 0.25)",
    )
    ap.add_argument("--json", type=Path, default=Path("gpu_check_report.json"),
                    help="the report (default: %(default)s)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(args.genies_data, args.sample)
        return 0
    t_start = time.perf_counter()
    # cuBLAS reads its workspace setting when CUDA starts: deterministic training needs it
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if args.wheels:
        print("wheels:", use_wheels(args.wheels))
    import torch
    import transformers

    from genies.models.loading import LoadedModel
    from genies.models.tiny import train_tiny_tokenizer

    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --tiny for the CPU smoke check")
    if device.type == "cpu":  # pretend GPUs for the split stages, before any backward pass
        from tests import fakedev

        if not fakedev.UNAVAILABLE:
            fakedev.register()
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
    report = Report(device, args.budget_s, t_start)

    for name in SCORE_DATASETS:
        table = sample[(name, "test")].slice(0, n_examples)
        cols = table.select(["prompt", "responses"]).to_pydict()
        report.run(f"score {name}", score_stage, loaded, cols["prompt"], cols["responses"],
                   args, plans)  # fmt: skip
    few_shot = f"score {FEW_SHOT_DATASET} {N_SHOTS}-shot"
    prompts, responses, kept_shots = few_shot_inputs(
        sample[(FEW_SHOT_DATASET, "test")].slice(0, n_examples),
        sample[(FEW_SHOT_DATASET, "train")],
        tokenizer,
    )
    report.run(few_shot, score_stage, loaded, prompts, responses, args, plans, shots=kept_shots)
    split = SplitDevices(device)
    split_table = sample[(SCORE_DATASETS[0], "test")].slice(0, 4)
    report.run("split: scoring and capture", split_scoring_stage, split, tokenizer, split_table)
    report.run("split: training step", split_training_stage, split, tokenizer, split_table)
    report.run("split: own reward model", split_classifier_stage, split, tokenizer, split_table)
    reward_table = sample[(SCORE_DATASETS[1], "test")].slice(0, n_examples)
    report.run("score own reward model", classifier_stage, loaded, reward_table, args, plans)
    train_table = sample[(TRAIN_DATASET, "train")]
    kept = {}
    report.run("train lora", train_stage, loaded, train_table, None, args, plans, kept)
    report.run("deterministic training", determinism_stage, kept, loaded, args)
    kept.clear()
    if not bnb_ok:
        report.skip("train qlora", f"no bitsandbytes ({bnb_why})")
        print("QLoRA skipped: bitsandbytes is not importable; bring its wheel with --wheels DIR")
    else:
        del loaded, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = build_llama(dims, tokenizer, device, dtype)
        quantise_nf4(model, dtype, device)
        loaded = LoadedModel(model, tokenizer, device, dtype, quantization="nf4")
        report.run("train qlora", train_stage, loaded, train_table, "nf4", args, plans)
    return report.finish(env, args.json)


if __name__ == "__main__":
    sys.exit(main())
