"""Bytes of the activation cache per model at the paper preset, before and after the forward
job stored only what a configured method reads (computed from shapes and counts; nothing runs).

Rows per (dataset, split, stimulus) come from the real data (examples x responses, x 2 answers for
the yes/no stimulus). Before: every forward job (one per stimulus, dataset and split needed, the
zero-shot ones included) stored the residual stream of every layer and every attention head's
output, float16. Now: `genies.pipeline.plan.Plan.forward_work` (heads only where MMS or CRA read
them, the residual layers where LAT reads them, and the one yes/no layer of CCS).

    .venv/bin/python bench/bench_activation_cache.py [--data-dir ../shared/genies-data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from genies.data.raw import RawData, split_path
from genies.pipeline import interventions as registry
from genies.pipeline.plan import Plan

REPO = Path(__file__).resolve().parent.parent
# (layers, hidden) of the LLaMA shapes; heads x head_dim = hidden, so one layer's head
# outputs take as many bytes as its residual.
SHAPES = {"7B": (32, 4096), "13B": (40, 5120), "30B": (60, 6656)}
F16 = 2


def text_rows(raw: RawData, dataset: str, split: str) -> int:
    """Texts of a split: examples x responses."""
    return sum(len(r["responses"]) for r in raw.read_json(split_path(dataset, split)))


def cache_bytes(store: dict, rows: dict, layers: int, hidden: int) -> int:
    """Bytes of every stored tensor; "all" (before) is every layer's residual and heads."""
    per_layer = hidden * F16  # per text and layer, for the residual or for all heads
    total = 0
    for (dataset, split, stimulus), kinds in store.items():
        texts = rows[(dataset, split)] * (2 if stimulus == "yesno" else 1)
        if kinds == "all":
            total += texts * 2 * layers * per_layer
            continue
        if "heads" in kinds:
            total += texts * layers * per_layer
        resid = kinds.get("resid")
        if resid is not None:
            total += texts * (layers if resid == "all" else len(resid)) * per_layer
    return total


def stored_units(plan: Plan):
    """(dataset, split, stimulus) -> layers-worth of values stored per text, before and now."""
    before, now = {}, {}
    for dataset in plan.datasets:
        before[(dataset, "test", "plain")] = "all"  # zero-shot's forward job wrote them too
    for name in plan.of_family("probe"):
        stimulus = registry.get(name).stimulus
        for train, ev in plan.train_eval_pairs(name):
            before[(train, "train", stimulus)] = "all"
            before[(ev, "test", stimulus)] = "all"
    for dataset in plan.datasets:
        for split, stimuli in plan.forward_work(dataset).items():
            for stimulus, kinds in stimuli.items():
                now[(dataset, split, stimulus)] = kinds
    return before, now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared/genies-data"))
    args = ap.parse_args()
    paper = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    raw = RawData(args.data_dir)
    print("activation cache per model at the paper preset (float16, every example)")
    for shifts in ("genies", "all"):
        config = {
            **paper,
            "data_dir": args.data_dir,
            "shifts": shifts,
            "caps": {"train_examples": None, "test_examples": None},
        }
        plan = Plan(config)
        before, now = stored_units(plan)
        rows = {}
        for dataset, split, _ in {*before, *now}:
            if (dataset, split) not in rows:
                rows[(dataset, split)] = text_rows(raw, dataset, split)
        for shape, (layers, hidden) in SHAPES.items():
            b = cache_bytes(before, rows, layers, hidden)
            n = cache_bytes(now, rows, layers, hidden)
            print(
                f"  {shifts:<6} {shape:>3}: before {b / 1e9:7.1f} GB, now {n / 1e9:7.1f} GB "
                f"({100 * (1 - n / b):.0f}% less)"
            )


if __name__ == "__main__":
    main()
