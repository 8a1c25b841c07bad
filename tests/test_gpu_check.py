"""bench/gpu_check.py in its CPU smoke mode: the code path the GPU check runs, quickly.

It runs in a subprocess where snakemake, duckdb and bitsandbytes cannot be imported (the GPU
machine has torch, transformers, peft, accelerate and pyarrow only), so QLoRA must be skipped
with a note, and once with bitsandbytes when it is installed here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = """
import runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None  # import fails as if not installed
sys.argv = ["bench/gpu_check.py", *sys.argv[1:]]
runpy.run_path("bench/gpu_check.py", run_name="__main__")
"""
SMOKE = ["--tiny", "--examples", "2", "--steps", "2", "--batch-pairs", "2"]


def _run(tmp_path, blocked):
    out = tmp_path / "figures.json"
    code = RUN.format(blocked=tuple(blocked))
    proc = subprocess.run(
        [sys.executable, "-c", code, *SMOKE, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _check_common(figures):
    stages = {row["stage"]: row for row in figures["stages"]}
    for name in ("alpaca_high_quality", "code_hard", "change_my_view", "us_history_textbook"):
        row = stages[f"score {name}"]
        assert row["tokens"] > 0 and row["tokens_per_s"] > 0 and row["examples"] == 2
        assert row["planned_above_start"] > 0 and row["budget"] == "0.25 GiB"  # planned
    few = stages["score code_hard 5-shot"]
    assert few["shots_kept_mean"] < 5  # 5 code demonstrations overflow 2048 positions
    lora = stages["train lora"]
    assert lora["pairs"] == 4 and lora["pairs_per_s"] > 0 and len(lora["losses"]) == 2
    assert lora["planned_above_start"] > 0 and lora["plan"]["max_pairs"] >= 1
    split = stages["split over devices"]
    assert split["agree"] is True, split
    return stages


def test_smoke_without_bitsandbytes(tmp_path):
    figures, stdout = _run(tmp_path, ["snakemake", "duckdb", "bitsandbytes"])
    stages = _check_common(figures)
    assert "bitsandbytes" in stages["train qlora"]["skipped_because"]
    assert "QLoRA skipped" in stdout


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="no bitsandbytes")
def test_smoke_with_qlora(tmp_path):
    figures, _ = _run(tmp_path, ["snakemake", "duckdb"])
    stages = _check_common(figures)
    qlora = stages["train qlora"]
    assert qlora["pairs"] == 4 and qlora["pairs_per_s"] > 0 and len(qlora["losses"]) == 2
    assert qlora["plan"]["autocast"] is False  # float32 compute on the CPU: no bf16 autocast


def test_sample_is_small_and_complete():
    import pyarrow.parquet as pq

    sample = ROOT / "bench" / "gpu_check_sample.parquet"
    assert sample.stat().st_size < 5_000_000
    ids = pq.read_table(sample, columns=["example_id"]).column("example_id").to_pylist()
    sets = {tuple(i.split("/")[:2]) for i in ids}
    assert ("alpaca_high_quality", "train") in sets and ("code_hard", "train") in sets
    assert sum(1 for i in ids if i.startswith("alpaca_high_quality/train/")) >= 64
