"""The tune job trains once and predicts every eval dataset with the same loaded model."""

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from genies.data.materialise import examples_table
from genies.io import read_provenance
from genies.methods.tuned.job import run_tune_job
from genies.methods.tuned.reward_model import WEIGHTS_FILE
from genies.models.prepare import prepare_model
from tests.fixtures import make_examples

TORCH_THREADS = 1  # pinned by tests/conftest.py
PARAMS = {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "lora_r": 4, "lora_alpha": 8,
          "val_fraction": 0.25, "dtype": "float32", "device": "cpu"}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_job")
    prepare_model({"source": "tiny", "seed": 0}, root / "tiny")
    pq.write_table(examples_table("src", "train", make_examples(16, 2, 1)), root / "src.parquet")
    pq.write_table(examples_table("src", "test", make_examples(5, 2, 2)), root / "src.test.parquet")
    pq.write_table(examples_table("tgt", "test", make_examples(4, 3, 3)), root / "tgt.test.parquet")
    return root


def tune(files, name="run", params=PARAMS, limit=None):
    evals = {"src": files / "src.test.parquet", "tgt": files / "tgt.test.parquet"}
    run_tune_job(model_dir=files / "tiny", train_file=files / "src.parquet", eval_files=evals,
                 out_dir=files / name, predictions_path=files / f"{name}.parquet", method="lora",
                 params=params, seed=0, dataset="src", model_name="tiny", limit=limit,
                 job={"threads": 1})  # fmt: skip
    info = json.loads((files / name / "reward_model.json").read_text())
    return info, pq.read_table(files / f"{name}.parquet")


def test_one_job_predicts_every_eval_dataset(files):
    info, table = tune(files)
    assert info["reused_finished_training"] is False
    counts = {e: table.column("eval").to_pylist().count(e) for e in ("src", "tgt")}
    assert counts == {"src": 5, "tgt": 8}  # k - 1 pairs per example
    assert set(table.column("train").to_pylist()) == {"src"}
    prov = read_provenance(files / "run.parquet")
    assert prov["evals"] == ["src", "tgt"] and prov["params"]["adapter"]["method"] == "lora"


def test_a_rerun_with_the_same_training_inputs_only_predicts(files):
    first_info, first = tune(files)
    weights = (files / "run" / WEIGHTS_FILE).read_bytes()
    # Snakemake deletes a job's outputs before rerunning it (e.g. after an eval set changed)
    for path in (files / "run" / WEIGHTS_FILE, files / "run" / "reward_model.json"):
        path.unlink()
    info, again = tune(files, limit=2)
    assert info["reused_finished_training"] is True
    assert (
        info["train_loss"] == first_info["train_loss"]
        and info["best_step"] == first_info["best_step"]
    )
    assert (files / "run" / WEIGHTS_FILE).read_bytes() == weights
    want = first.filter(pc.is_in(first["example_id"], again.column("example_id")))
    assert again.num_rows == 2 + 4
    # the same weights; fewer examples batch differently, hence float tolerance
    np.testing.assert_allclose(
        again.column("prob_preferred").to_numpy(),
        want.column("prob_preferred").to_numpy(),
        atol=1e-6,
    )


def test_changed_training_params_train_again(files):
    info, _ = tune(files, params={**PARAMS, "lr": 1e-3})
    assert info["reused_finished_training"] is False and info["params"]["lr"] == 1e-3
