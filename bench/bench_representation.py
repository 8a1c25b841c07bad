"""Forward-pass work of the representation-reading family, this workflow vs the published design.

For the shifts of a config (default: GENIES-15 with all five probe methods, every example),
counts the sequences and tokens the model must process:

* this workflow: one pass per (stimulus, dataset, split), shared by every method, every cell
  and zero-shot; prompts are computed once per example (prefix reuse) and the Yes/No answers
  of CRA/CCS share the prompt + response + question prefix;
* the published design (docs/fidelity.md): every method reruns the model at batch
  size 1 for its training run on each source and target reference, and again for every
  evaluation: 2 texts per training pair (4 for CRA: Yes and No), 2 texts per evaluation pair
  (4 for CRA), CCS on a bootstrap of 100 training examples (2 texts x Yes/No) and, per target,
  of one pair per test example (2 texts x Yes/No). Both count the same cells: every
  (train, eval) pair that the GENIES cells read (source -> target, source -> source,
  target -> target, target reference -> itself).

Token counts use the model's tokenizer. With --results, also prints the activation cache on
disk and the wall time of all fit jobs of a finished run (from their provenance).

    .venv/bin/python bench/bench_representation.py [--config config.yaml] [--all-examples]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from collections import defaultdict
from pathlib import Path

import yaml
from transformers import AutoTokenizer

from genies.data.materialise import load_split
from genies.data.stimuli import stimulus_units
from genies.methods.probes import METHODS
from genies.models.tokens import tokenize_examples
from genies.pipeline.config import validate_config
from genies.pipeline.plan import Plan

PROBES = ("mms", "lat1", "lat2", "cra", "ccs")
CCS_TRAIN_EXAMPLES = 100  # published default max_examples


def text_tokens(tokenizer, plan, dataset, split, stimulus, limit):
    """Per example: (prefix tokens, [continuation tokens]) of a stimulus."""
    table = load_split(plan.raw, dataset, split)
    table = table if limit is None else table.slice(0, limit)
    cols = table.select(["prompt", "responses"]).to_pydict()
    prefixes, conts, eos = stimulus_units(stimulus, cols["prompt"], cols["responses"])
    p, r = tokenize_examples(tokenizer, prefixes, conts, append_eos=eos)
    return [(len(a), [len(x) for x in b]) for a, b in zip(p, r, strict=True)]


def ours(tokenizer, plan, limits):
    units = set()
    for method in PROBES:
        st = METHODS[method].stimulus
        for train, ev in plan.train_eval_pairs(method):
            units.add((st, train, "train"))
            units.add((st, ev, "test"))
    seqs = toks = 0
    for st, dataset, split in sorted(units):
        for prefix, conts in text_tokens(tokenizer, plan, dataset, split, st, limits[split]):
            seqs += len(conts)
            toks += prefix + sum(conts)
    return len(units), seqs, toks


def published(tokenizer, plan, limits):
    """Sequences and tokens of the published per-method runs (full texts, batch size 1)."""
    cache = {}

    def full(dataset, split, stimulus):
        key = (dataset, split, stimulus)
        if key not in cache:
            rows = text_tokens(tokenizer, plan, dataset, split, stimulus, limits[split])
            cache[key] = [[prefix + c for c in conts] for prefix, conts in rows]
        return cache[key]

    seqs = toks = 0
    for method in PROBES:
        st = METHODS[method].stimulus
        per_text = 2 if st == "yesno" else 1  # yesno rows come as (Yes, No) per response
        # The same cells as this workflow: one training run per train dataset, one evaluation
        # per (train, eval) pair the cells read.
        runs = defaultdict(list)
        for train, ev in plan.train_eval_pairs(method):
            runs[train].append(ev)
        for train, evals in runs.items():
            rows = full(train, "train", st)
            if method == "ccs":
                rows = rows[:CCS_TRAIN_EXAMPLES]
            for texts in rows:  # one training pair: preferred + one dispreferred
                pair = [texts[0], texts[1]] if per_text == 1 else texts[:4]
                seqs += len(pair)
                toks += sum(pair)
            for ev in evals:
                for texts in full(ev, "test", st):
                    k = len(texts) // per_text
                    if method == "ccs":  # one pair per example, Yes and No
                        pair = texts[:4]
                    else:  # all k-1 pairs, both texts each (Yes and No for CRA)
                        per = texts[:per_text] * (k - 1) + texts[per_text:]
                        pair = per
                    seqs += len(pair)
                    toks += sum(pair)
    return seqs, toks


def run_figures(results: Path):
    sizes = defaultdict(int)
    for path in glob.glob(str(results / "forward/*/*/*/*.safetensors")):
        sizes[Path(path).parts[-3]] += os.path.getsize(path)
    fit_seconds = 0.0
    n_fits = 0
    for path in glob.glob(str(results / "fit/*/*/*.json")):
        info = json.loads(Path(path).read_text())
        prov = info.get("provenance", {})
        fit_seconds += float(prov.get("seconds", 0.0))
        n_fits += 1
    return sizes, n_fits, fit_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--all-examples", action="store_true", help="ignore the config's caps")
    ap.add_argument("--model-dir", default="resources/models/smollm2-135m")
    ap.add_argument("--results", default="results", help="a finished run's results folder")
    args = ap.parse_args()
    config = validate_config(yaml.safe_load(Path(args.config).read_text()))
    config["interventions"] = {**config["interventions"], **{m: {} for m in PROBES}}
    plan = Plan(config)
    limits = (
        {"train": None, "test": None}
        if args.all_examples
        else {
            "train": plan.cap("train"),
            "test": plan.cap("test"),
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    units, seqs, toks = ours(tokenizer, plan, limits)
    pub_seqs, pub_toks = published(tokenizer, plan, limits)
    print(f"shifts {len(plan.shifts)}, probe methods {', '.join(PROBES)}, caps {limits}")
    print(f"this workflow : {units} forward jobs, {seqs} sequences, {toks} tokens")
    print(f"published     : {pub_seqs} sequences, {pub_toks} tokens (batch size 1)")
    print(f"ratio         : {pub_seqs / seqs:.1f}x sequences, {pub_toks / toks:.1f}x tokens")
    results = Path(args.results)
    if results.is_dir():
        sizes, n_fits, fit_seconds = run_figures(results)
        total = sum(sizes.values())
        by_stim = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(sizes.items()))
        print(f"activation cache in {results}: {total / 2**20:.1f} MiB ({by_stim})")
        print(f"fit jobs in {results}: {n_fits}, {fit_seconds:.1f} s in all")


if __name__ == "__main__":
    main()
