"""bench/bench_peers.py without lm-eval: its help, and the message when lm-eval is missing.

The benchmark itself (lm-eval against the scorer on SmolLM2) is a measurement, run by hand
(docs/performance.md); these checks only load the script.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench_peers(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the script imports its neighbour bench_zero_shot
    spec = importlib.util.spec_from_file_location("bench_peers", BENCH / "bench_peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_names_what_is_measured(bench_peers, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_peers.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("lm-evaluation-harness", "token work ratio", "--batch-size", "--dtype", "bench"):
        assert text in out


def test_missing_lm_eval_names_the_bench_extra(bench_peers, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", None)  # import fails
    missing = tmp_path / "missing"
    argv = ["--data-dir", str(missing), "--model-dir", str(missing), "--dtype", "float32"]
    with pytest.raises(SystemExit) as exit_info:  # before the missing model and data are read
        bench_peers.main(argv)
    message = str(exit_info.value.code)
    assert "lm_eval" in message and "`bench` extra" in message and ".[bench]" in message


def test_unknown_dtype_is_refused(bench_peers, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_peers.main(["--dtype", "float16"])
    assert exit_info.value.code == 2
    assert "float16 is not float32 or bfloat16" in capsys.readouterr().err
