"""Prediction files are checked against their evaluation splits before anything is counted."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genies.data.materialise import examples_table
from genies.data.predictions import expand_pairs, predictions_table
from genies.errors import GeniesError
from genies.io import write_parquet
from genies.pipeline.plan import Plan
from genies.results import published
from genies.results.verify import PredictionFile, PredictionFileError, read_checked

from .fixtures import make_examples, workflow_config

# dataset -> (examples, responses per example): 6 x 2 = 12 pairs and 4 x 1 = 4 pairs.
SPLITS = {"tgt_b": (6, 3), "src_a": (4, 2)}
FILE = "results/predictions/m/zero_shot/none/tgt_b.parquet"


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, (dataset, (n, k)) in enumerate(SPLITS.items()):
        table = examples_table(dataset, "test", make_examples(n, k, seed=i))
        write_parquet(table, data_file(dataset), {"dataset": dataset, "split": "test"})
    return tmp_path


def data_file(dataset):
    return f"results/data/{dataset}/test.parquet"


def group(intervention, train, dataset, limit=None, seed=0) -> pa.Table:
    """Complete predictions of (m, intervention, train, dataset) on the split's pairs."""
    pairs = expand_pairs(pq.read_table(data_file(dataset)).slice(0, limit))
    n = len(pairs["example_id"])
    prob = np.random.default_rng(seed).uniform(0.05, 0.95, n)
    return predictions_table("m", intervention, train, dataset, pairs, prob, prob > 0.5)


def expected(path=FILE, rule="predict_zero_shot", groups=(("m", "zero_shot", "none", "tgt_b"),)):
    return PredictionFile(path, rule, tuple(groups))


def check(files, limit=None):
    return read_checked(files, [data_file(d) for d in SPLITS], limit)


def failure(table: pa.Table, limit=None) -> str:
    write_parquet(table, FILE)
    with pytest.raises(PredictionFileError) as err:
        check([expected()], limit)
    message = str(err.value)
    # Always: the file, the rule that made it, and how to rebuild it.
    assert f"  {FILE} (made by rule predict_zero_shot):" in message
    assert f"rm '{FILE}'" in message and "--forcerun predict_zero_shot" in message
    return message


def test_complete_files_pass_in_file_order(root):
    write_parquet(group("zero_shot", "none", "tgt_b"), FILE)
    tuned = "results/predictions/m/lora/src_a.parquet"
    write_parquet(
        pa.concat_tables([group("lora", "src_a", "tgt_b"), group("lora", "src_a", "src_a")]), tuned
    )
    lora = [("m", "lora", "src_a", "tgt_b"), ("m", "lora", "src_a", "src_a")]
    table = check([expected(), expected(tuned, "tune", lora)])
    assert table.num_rows == 12 + 12 + 4
    assert table.column("intervention").to_pylist() == ["zero_shot"] * 12 + ["lora"] * 16


def test_half_the_pairs(root):
    message = failure(group("zero_shot", "none", "tgt_b").slice(0, 6))
    assert "6 of 12 pairs missing (tgt_b/test/00003 pair 0, tgt_b/test/00003 pair 1," in message


def test_duplicated_pairs(root):
    full = group("zero_shot", "none", "tgt_b")
    message = failure(pa.concat_tables([full, full.slice(0, 6)]))
    assert "6 pairs more than once (6 extra rows) (tgt_b/test/00000 pair 0," in message
    assert "missing" not in message


def test_unknown_ids(root):
    table = group("zero_shot", "none", "tgt_b")
    ids = table.column("example_id").to_pylist()
    ids[4] = "tgt_b/test/00099"
    message = failure(table.set_column(4, "example_id", pa.array(ids)))
    assert "1 row of pairs that its test split does not have (tgt_b/test/00099 pair 0)" in message
    assert "1 of 12 pairs missing (tgt_b/test/00002 pair 0)" in message


@pytest.mark.parametrize("bad", [1.5, float("nan"), -0.1, float("inf")])
def test_probability_out_of_range(root, bad):
    table = group("zero_shot", "none", "tgt_b")
    prob = table.column("prob_preferred").to_numpy().copy()
    prob[3] = bad
    i = table.schema.get_field_index("prob_preferred")
    message = failure(table.set_column(i, "prob_preferred", pa.array(prob)))
    assert "1 pair whose probability is not in [0, 1]" in message
    assert f"(tgt_b/test/00001 pair 1: {str(bad).lower()})" in message


def test_skipped_pairs_are_recorded_not_scored(root):
    pairs = expand_pairs(pq.read_table(data_file("tgt_b")))
    skipped = pairs["example_row"] == 2  # example 2 did not fit the context
    prob = np.where(skipped, np.nan, 0.7)
    table = predictions_table(
        "m", "zero_shot", "none", "tgt_b", pairs, prob, ~skipped, skipped=skipped
    )
    write_parquet(table, FILE)
    assert check([expected()]).column("skipped").to_pylist() == list(skipped)
    # A skipped pair that claims a probability or a win is not one the scorer wrote.
    correct = table.column("correct").to_numpy(zero_copy_only=False) | skipped
    i = table.schema.get_field_index("correct")
    message = failure(table.set_column(i, "correct", pa.array(correct)))
    assert "2 skipped pairs with a probability or marked correct" in message


def test_other_data_or_groups(root):
    table = group("zero_shot", "none", "tgt_b")
    i = table.schema.get_field_index("dispreferred_response")
    other = pa.array(np.roll(table.column(i).to_numpy(), 1), pa.int8())
    message = failure(table.set_column(i, "dispreferred_response", other))
    assert "pairs whose response indices differ from the split's" in message
    # A file holding another group than the one it is for: all its pairs are missing.
    message = failure(group("random", "none", "tgt_b"))
    assert "12 of 12 pairs missing" in message
    assert "12 rows of (model, intervention, train, eval) groups it is not for " in message
    assert "(m, random, none, tgt_b)" in message


def test_the_test_cap(root):
    write_parquet(group("zero_shot", "none", "tgt_b", limit=2), FILE)
    assert check([expected()], limit=2).num_rows == 4
    # Predictions of 2 examples, read under another cap: stale, not half a split.
    message = str(pytest.raises(PredictionFileError, check, [expected()], 3).value)
    assert "(the first 3 examples of each)" in message
    assert "2 of 6 pairs missing (tgt_b/test/00002 pair 0, tgt_b/test/00002 pair 1)" in message
    with pytest.raises(GeniesError, match="no test split for ref_d"):
        check([expected(groups=[("m", "zero_shot", "none", "ref_d")])])


def test_the_plan_says_what_each_file_holds(genies_folder):
    config = workflow_config(genies_folder, interventions={"zero_shot": {}, "lora": {}})
    plan = Plan({**config, "capability_interventions": ["lora"]})
    files = {f["path"]: f for f in plan.expectations()}
    assert list(files) == plan.prediction_files()
    assert files["results/predictions/tiny/zero_shot/none/tgt_b.parquet"] == {
        "path": "results/predictions/tiny/zero_shot/none/tgt_b.parquet",
        "rule": "predict_zero_shot",
        "groups": [["tiny", "zero_shot", "none", "tgt_b"]],
    }
    lora = files["results/predictions/tiny/lora/src_a.parquet"]
    assert lora["rule"] == "tune"
    assert sorted(g[3] for g in lora["groups"]) == ["src_a", "tgt_b", "tgt_c"]
    cell = plan.cell_expectations("tiny", "lora", "src_a__tgt_c")
    assert [f["path"] for f in cell] == plan.cell_files("tiny", "lora", "src_a__tgt_c")
    assert sorted(plan.test_files(cell)) == [
        f"results/data/{d}/test.parquet" for d in ("ref_d", "src_a", "tgt_b", "tgt_c")
    ]


def test_published_runs_are_checked_against_their_runs_table(tmp_path):
    pairs = {
        "example_id": np.array(["tgt_b/test/0", "tgt_b/test/0", "tgt_b/test/1"], object),
        "pair_index": np.array([0, 1, 0], np.int16),
        "preferred_response": np.zeros(3, np.int8),
        "dispreferred_response": np.array([1, 2, 1], np.int8),
    }
    model = published.published_model("llama-7b")
    rows = predictions_table(model, "mms", "src_a", "tgt_b", pairs, [0.2, 0.7, 0.9], [0, 1, 1])
    run = {
        "model": model,
        "intervention": "mms",
        "train": "src_a",
        "eval": "tgt_b",
        "upstream": "evaluations/mms/llama-7b-src_a/tgt_b.json",
        "pairs": 3,
        "test_pairs": 4,
        "matched": "first",
    }
    runs = pa.Table.from_pylist([run], schema=published.RUN_SCHEMA)
    published.check_imported({"predictions": rows, "runs": runs}, "p.parquet")

    def problems(rows, runs):
        with pytest.raises(PredictionFileError) as err:
            published.check_imported({"predictions": rows, "runs": runs}, "p.parquet")
        assert "p.parquet (made by rule import_published)" in str(err.value)
        return str(err.value)

    twice = pa.concat_tables([rows, rows.slice(0, 1)])
    assert "4 rows; its run has 3 pairs; 1 (example_id, pair_index) twice" in problems(twice, runs)
    i = rows.schema.get_field_index("prob_preferred")
    bad = rows.set_column(i, "prob_preferred", pa.array([0.2, 1.5, float("nan")]))
    assert "2 probabilities not in [0, 1]" in problems(bad, runs)
    claims_all = runs.set_column(
        runs.schema.get_field_index("matched"), "matched", pa.array(["all"])
    )
    assert "matched 'all' with 3 of the split's 4 pairs" in problems(rows, claims_all)
    none = runs.slice(0, 0)
    assert "(llama-7b@published, mms, src_a, tgt_b): 3 rows; no run" in problems(rows, none)
