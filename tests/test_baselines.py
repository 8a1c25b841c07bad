"""Tests of genies.forward.baselines: few-shot prompt construction and the random baseline."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from genies.data.materialise import examples_table
from genies.data.predictions import PREDICTION_SCHEMA, expand_pairs
from genies.forward.baselines import (
    few_shot_examples,
    few_shot_prompt,
    few_shot_prompts,
    random_predictions,
    write_random_predictions,
)
from genies.io import read_provenance

from .fixtures import make_examples


def table(name, split, n, k=2, seed=0):
    return examples_table(name, split, make_examples(n, k, seed))


def test_prompt_format():
    got = few_shot_prompt([("P1:", " a"), ("P2:", " b")], "Q:")
    assert got == "\n\nP1: a\n\nP2: b\n\nQ:"


def test_demonstrations_are_seeded_source_preferred_responses():
    source, target = table("src", "train", 20, k=3, seed=1), table("tgt", "test", 6, seed=2)
    prompts = few_shot_prompts(target, source, n_shots=5, seed=0)
    assert prompts == few_shot_prompts(target, source, n_shots=5, seed=0)
    assert prompts != few_shot_prompts(target, source, n_shots=5, seed=1)
    src = source.to_pylist()
    demos = {"\n\n" + r["prompt"] + r["responses"][r["preferred"]] for r in src}
    for prompt, row in zip(prompts, target.to_pylist(), strict=True):
        assert prompt.endswith("\n\n" + row["prompt"])
        shots = prompt[: -len(row["prompt"]) - 2]
        found = [d for d in demos if d in shots]
        assert len(found) == 5 and len(shots) == sum(map(len, found))
        assert all(marker_ok(d) for d in found)  # every demonstration shows the good answer
    # Demonstrations differ between examples (drawn per example).
    assert len({p.split("### Instruction")[1] for p in prompts}) > 1
    # the prompts file keeps the data and the demonstrations; the scoring job assembles them
    out = few_shot_examples(target, source, n_shots=5, seed=0)
    assert out.drop(["demonstrations"]).equals(target)
    demos = [[(d["prompt"], d["response"]) for d in ds] for ds in out["demonstrations"].to_pylist()]
    rows = target.to_pylist()
    assert [few_shot_prompt(d, r["prompt"]) for d, r in zip(demos, rows, strict=True)] == prompts


def marker_ok(demo: str) -> bool:
    return demo.split("### Response:\n", 1)[1].startswith("good ")


def test_never_shows_the_evaluated_example():
    source = table("src", "train", 6)
    prompts = few_shot_prompts(source, source, n_shots=5, seed=0)  # source == eval
    for prompt, row in zip(prompts, source.to_pylist(), strict=True):
        own = row["prompt"] + row["responses"][row["preferred"]]
        assert own not in prompt
        assert prompt.count("### Instruction") == 6
    # A test example duplicated in train (same content, other id) is excluded too.
    test = examples_table("src", "test", [make_examples(6, 2, 0)[0]])
    own = test.to_pylist()[0]
    prompt = few_shot_prompts(test, source, n_shots=5, seed=3)[0]
    assert own["prompt"] + own["responses"][own["preferred"]] not in prompt
    with pytest.raises(ValueError, match="only 5 other examples"):
        few_shot_prompts(source, source, n_shots=6, seed=0)


def test_random_baseline():
    prob, correct = random_predictions(20000, "tgt", seed=0)
    assert (prob == 0.5).all() and prob.dtype == np.float64
    assert abs(correct.mean() - 0.5) < 0.02
    again = random_predictions(20000, "tgt", seed=0)[1]
    assert np.array_equal(correct, again)
    assert not np.array_equal(correct, random_predictions(20000, "tgt", seed=1)[1])
    assert not np.array_equal(correct, random_predictions(20000, "other", seed=0)[1])
    # A prefix of the pairs (smaller caps) keeps its coins.
    assert np.array_equal(random_predictions(100, "tgt", seed=0)[1], correct[:100])


def test_random_prediction_file(tmp_path):
    data = table("tgt", "test", 10, k=3)
    pq.write_table(data, tmp_path / "data.parquet")
    out = tmp_path / "pred.parquet"
    write_random_predictions(tmp_path / "data.parquet", out, "m", "tgt", seed=0, limit=8)
    got = pq.read_table(out)
    assert got.schema.remove_metadata() == PREDICTION_SCHEMA
    assert got.num_rows == len(expand_pairs(data.slice(0, 8))["example_id"]) == 16
    assert set(got.column("prob_preferred").to_pylist()) == {0.5}
    assert got.column("intervention").to_pylist()[0] == "random"
    assert read_provenance(out)["params"] == {"seed": 0}
    coins = random_predictions(16, "tgt", seed=0)[1]
    assert np.array_equal(got.column("correct").to_numpy(), coins)
