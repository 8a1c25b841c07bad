"""End to end: the real Snakemake DAG on a tiny random model and tiny fixture datasets."""

import json
import os
import time
from collections import Counter

import duckdb
import pyarrow.parquet as pq
import pytest

from genies.io import read_provenance

from .fixtures import make_examples, make_genies_folder, workflow_config
from .workflow import planned_jobs, planned_outputs, snakemake, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = make_genies_folder(root / "genies-data")
    write_config(root, workflow_config(data))
    snakemake(root, "genies_table")
    return root


def query(workdir, sql):
    con = duckdb.connect(str(workdir / "results/results.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_database_has_zero_shot_results(workdir):
    rows = query(
        workdir, "select dataset, pairs, examples from zero_shot_accuracy order by dataset"
    )
    # 6 test examples each with k-1 pairs: src_a k=2, tgt_b k=3, tgt_c k=2, ref_d k=4.
    assert rows == [("ref_d", 18, 6), ("src_a", 6, 6), ("tgt_b", 12, 6), ("tgt_c", 6, 6)]
    (acc,) = query(
        workdir, "select min(accuracy) >= 0 and max(accuracy) <= 1 from zero_shot_accuracy"
    )[0]
    assert acc
    shifts = query(workdir, "select source, target, target_reference, label from shifts")
    assert ("src_a", "tgt_c", "ref_d", "probing") in shifts
    runs = query(workdir, "select job, count(*) from runs group by job order by job")
    assert runs == [("forward", 4), ("materialize", 8), ("predict", 4)]
    (versions,) = query(workdir, "select packages from runs where job = 'forward' limit 1")[0]
    assert json.loads(versions)["torch"]
    warnings = query(workdir, "select count(*) from datasets")
    assert warnings == [(8,)]


def test_predictions_match_forward_scores(workdir):
    preds = pq.read_table(workdir / "results/predictions/tiny/zero_shot/none/tgt_b.parquet")
    fwd = pq.read_table(workdir / "results/forward/tiny/plain/tgt_b/test.parquet").to_pylist()
    score = {(r["example_id"], r["response_index"]): r["logprob_sum"] for r in fwd}
    for row in preds.to_pylist():
        s_pref = score[(row["example_id"], row["preferred_response"])]
        s_disp = score[(row["example_id"], row["dispreferred_response"])]
        assert row["correct"] == (s_pref > s_disp)
        assert (row["prob_preferred"] > 0.5) == (s_pref > s_disp)
    prov = read_provenance(workdir / "results/forward/tiny/plain/tgt_b/test.parquet")
    assert prov["tokens_processed"] >= prov["tokens_unique"] > 0
    assert prov["device"] == "cpu" and prov["seconds"] >= 0


def test_second_run_does_nothing(workdir):
    assert planned_jobs(workdir) == Counter()


def test_deleting_one_prediction_rebuilds_only_it(workdir):
    target = "results/predictions/tiny/zero_shot/none/tgt_c.parquet"
    os.remove(workdir / target)
    assert planned_jobs(workdir) == Counter(
        predict_zero_shot=1, aggregate=1, report_tables=1, genies_table=1
    )
    assert target in planned_outputs(workdir)
    snakemake(workdir, "genies_table")
    assert planned_jobs(workdir) == Counter()


def test_editing_one_dataset_reruns_only_its_jobs(workdir):
    time.sleep(1.1)  # mtime resolution
    path = workdir / "genies-data/distributions/tgt_b/test.json"
    path.write_text(json.dumps(make_examples(5, 3, 99)))
    jobs = planned_jobs(workdir)
    assert jobs == Counter(
        materialize=1,
        forward=1,
        predict_zero_shot=1,
        aggregate=1,
        report_tables=1,
        genies_table=1,
    )
    outputs = planned_outputs(workdir)
    assert "results/data/tgt_b/test.parquet" in outputs
    assert "results/forward/tiny/plain/tgt_b/test.parquet" in outputs
    snakemake(workdir, "genies_table")
    rows = query(workdir, "select pairs from zero_shot_accuracy where dataset = 'tgt_b'")
    assert rows == [(10,)]
    assert planned_jobs(workdir) == Counter()


def test_bad_data_fails_the_job_and_leaves_nothing(workdir):
    time.sleep(1.1)
    path = workdir / "genies-data/distributions/tgt_c/test.json"
    records = make_examples(3, 2, 5)
    del records[2]["responses"]
    path.write_text(json.dumps(records))
    proc = snakemake(workdir, "genies_table", check=False)
    assert proc.returncode != 0
    log = (workdir / "results/logs/materialize/tgt_c/test.log").read_text()
    assert "test.json, record 2, field 'responses': required field is missing" in log
    assert not (workdir / "results/data/tgt_c/test.parquet").exists()
    # The previous database stays readable and whole.
    assert query(workdir, "select count(*) > 0 from predictions")[0][0]
    path.write_text(json.dumps(make_examples(6, 2, 1003)))
    snakemake(workdir, "genies_table")


def test_unknown_model_is_rejected_before_any_job(tmp_path):
    data = make_genies_folder(tmp_path / "genies-data")
    write_config(tmp_path, workflow_config(data, run_models=["missing"]))
    proc = snakemake(tmp_path, "--dry-run", "genies_table", check=False)
    assert proc.returncode != 0
    assert "run_models names ['missing']" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
