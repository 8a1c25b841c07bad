"""bench/gpu_check.py in its CPU smoke mode: the code path the GPU check runs, quickly.

It runs in a subprocess where snakemake, duckdb and bitsandbytes cannot be imported (the GPU
machine has torch, transformers, peft, accelerate and pyarrow only), so QLoRA must be skipped
with a note, and once with bitsandbytes when it is installed here. On the CPU the split stages
spread their models over a pretend GPU (tests/fakedev.py) and the CPU; the tests below run the
same stage functions in this process with a device bug planted, and the stages must fail.
"""

from __future__ import annotations

import contextlib
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
SPLIT_STAGES = ("split: scoring and capture", "split: training step", "split: own reward model")


def _run(tmp_path, blocked):
    out = tmp_path / "figures.json"
    code = RUN.format(blocked=tuple(blocked))
    proc = subprocess.run(
        [sys.executable, "-c", code, *SMOKE, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _check_common(figures):
    stages = {row["stage"]: row for row in figures["stages"]}
    assert figures["failed"] == []
    for name in ("alpaca_high_quality", "code_hard", "change_my_view", "us_history_textbook"):
        row = stages[f"score {name}"]
        assert row["status"] == "passed"
        assert row["tokens"] > 0 and row["tokens_per_s"] > 0 and row["examples"] == 2
        assert row["planned_above_start"] > 0 and row["budget"] == "0.25 GiB"  # planned
    few = stages["score code_hard 5-shot"]
    assert few["shots_kept_mean"] < 5  # 5 code demonstrations overflow 2048 positions
    for name in SPLIT_STAGES:  # spread over a pretend GPU and the CPU
        row = stages[name]
        assert row["status"] == "passed", row
        assert set(row["device_map"].values()) == {"fakegpu:0", "cpu"}
    rm = stages["score own reward model"]
    assert rm["status"] == "passed" and rm["planned_above_start"] > 0 and rm["texts"] > 0
    lora = stages["train lora"]
    assert lora["pairs"] == 4 and lora["pairs_per_s"] > 0 and len(lora["losses"]) == 2
    assert lora["planned_above_start"] > 0 and lora["plan"]["max_pairs"] >= 1
    assert not lora["math_attention"]  # the CPU keeps its attention kernel
    same = stages["deterministic training"]
    assert same["status"] == "passed" and same["tensors_not_bitwise_equal"] == 0
    assert same["tensors"] > 0
    return stages


def test_smoke_without_bitsandbytes(tmp_path):
    figures, stdout = _run(tmp_path, ["snakemake", "duckdb", "bitsandbytes"])
    stages = _check_common(figures)
    assert stages["train qlora"]["status"] == "skipped"
    assert "bitsandbytes" in stages["train qlora"]["skipped_because"]
    assert "QLoRA skipped" in stdout


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="no bitsandbytes")
def test_smoke_with_qlora(tmp_path):
    figures, _ = _run(tmp_path, ["snakemake", "duckdb"])
    stages = _check_common(figures)
    qlora = stages["train qlora"]
    assert qlora["pairs"] == 4 and qlora["pairs_per_s"] > 0 and len(qlora["losses"]) == 2
    assert qlora["plan"]["autocast"] is False  # float32 compute on the CPU: no bf16 autocast


# --------------------------------------------------------------------------- in this process


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def split_inputs(gpu_check):
    from genies.models.tiny import train_tiny_tokenizer

    sample = gpu_check.read_sample(gpu_check.SAMPLE)
    table = sample[(gpu_check.SCORE_DATASETS[0], "test")].slice(0, 2)
    texts = [t for p, rs in zip(*table.select(["prompt", "responses"]).to_pydict().values(),
                                strict=True) for t in (p, *rs)]  # fmt: skip
    return train_tiny_tokenizer(512, corpus=texts), table


def _plant_scoring_bug(monkeypatch):
    """The scorer's row selection with the mask left on the input device (issue 19)."""
    from genies.forward import scoring

    @contextlib.contextmanager
    def keep_rows(model, keep):
        handle = model.get_output_embeddings().register_forward_pre_hook(
            lambda module, args: (args[0][keep], *args[1:])
        )
        try:
            yield
        finally:
            handle.remove()

    monkeypatch.setattr(scoring, "_keep_rows", keep_rows)


def _plant_reward_head_bugs(monkeypatch):
    """Both reward heads index the last hidden states with positions on the input device."""
    import torch

    from genies.methods.reward_classifier import ClassifierReward
    from genies.methods.tuned.reward_model import RewardModel

    def read_last(hidden, attention_mask):
        last = attention_mask.sum(dim=1) - 1  # not moved to hidden.device
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def last_hidden(self, input_ids, attention_mask):
        embeds = self.lm.get_input_embeddings()(input_ids)
        out = self._decoder(inputs_embeds=embeds, attention_mask=attention_mask)
        return read_last(out.last_hidden_state, attention_mask)

    def forward(self, input_ids, attention_mask):
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.head(read_last(out.last_hidden_state, attention_mask)).squeeze(-1)

    monkeypatch.setattr(RewardModel, "_last_hidden", last_hidden)
    monkeypatch.setattr(ClassifierReward, "forward", forward)


def test_split_stages_catch_device_bugs_and_every_stage_runs(
    gpu_check, split_inputs, fake_devices, monkeypatch, tmp_path
):
    """The split stages pass on the code as it is, and each fails, with the device error, when
    a device bug is planted in its path; a failed stage does not stop the next."""
    import torch

    assert fake_devices.autograd_ok()
    tokenizer, table = split_inputs
    stages = (gpu_check.split_scoring_stage, gpu_check.split_training_stage,
              gpu_check.split_classifier_stage)  # fmt: skip
    devices = gpu_check.SplitDevices(torch.device("cpu"))
    assert str(devices.first) == "fakegpu:0"
    report = gpu_check.Report(torch.device("cpu"), time_limit_s=600)
    for name, stage in zip(SPLIT_STAGES, stages, strict=True):
        report.run(name, stage, devices, tokenizer, table)
    assert [r["status"] for r in report.rows] == ["passed"] * 3, report.rows
    _plant_scoring_bug(monkeypatch)
    _plant_reward_head_bugs(monkeypatch)
    for name, stage in zip(SPLIT_STAGES, stages, strict=True):
        report.run(f"{name} (planted bug)", stage, devices, tokenizer, table)
    planted = report.rows[3:]
    assert [r["status"] for r in planted] == ["failed"] * 3
    for row in planted:
        assert row["error"].startswith("DeviceMismatch: indices should be either on cpu")
    assert report.finish({}, tmp_path / "report.json") == 1
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["failed"] == [r["stage"] for r in planted]


def test_planned_memory_off_by_more_than_a_quarter_fails_the_stage(gpu_check):
    import torch

    gib = gpu_check.GIB
    assert gpu_check.compare_memory(10 * gib, 12 * gib, 13 * gib, 1.1) == []
    low = gpu_check.compare_memory(10 * gib, 7 * gib, None, 1.1)
    assert len(low) == 1 and "allocated" in low[0] and "-30%" in low[0]
    high = gpu_check.compare_memory(10 * gib, 10 * gib, 14 * gib, 1.1)
    assert len(high) == 1 and "reserved" in high[0] and "+27%" in high[0]
    assert gpu_check.compare_memory(None, 7 * gib, 7 * gib, 1.1) == []  # nothing planned
    # on CUDA the report compares them (a stage with a plan 2x too small fails)
    report = gpu_check.Report(torch.device("cuda"), time_limit_s=600)
    row = report.run("over", lambda: {"planned_above_start": gib, "peak_above_start": 2 * gib,
                                      "reserved_above_start": int(2.2 * gib)})  # fmt: skip
    assert row["status"] == "failed" and "+100%" in row["error"]
    fine = report.run("fine", lambda: {"planned_above_start": gib, "peak_above_start": gib})
    assert fine["status"] == "passed"


def test_sample_is_small_and_complete():
    import pyarrow.parquet as pq

    sample = ROOT / "bench" / "gpu_check_sample.parquet"
    assert sample.stat().st_size < 5_000_000
    ids = pq.read_table(sample, columns=["example_id"]).column("example_id").to_pylist()
    sets = {tuple(i.split("/")[:2]) for i in ids}
    assert ("alpaca_high_quality", "train") in sets and ("code_hard", "train") in sets
    assert sum(1 for i in ids if i.startswith("alpaca_high_quality/train/")) >= 64
