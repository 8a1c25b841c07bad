"""End to end: a sequence-classification reward model (chat template) and a DPO policy of one's
own enter genies_table as interventions of their base run model."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from genies.forward.zero_shot import read_scores
from genies.results import metrics

from .fixtures import make_genies_folder, tiny_reward_model_dir, workflow_config
from .workflow import planned_jobs, query, snakemake, write_config

pytestmark = pytest.mark.e2e
BETA = 0.5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-external")
    data = make_genies_folder(root / "genies-data")
    rm = tiny_reward_model_dir(root / "my-reward-model", chat_template=True)
    config = workflow_config(
        data,
        models={
            "tiny": {"source": "tiny", "seed": 0},
            "tiny-policy": {"source": "tiny", "seed": 1},
            "rm": {"source": "local", "path": str(rm), "link": True, "chat_template": True},
        },
        interventions={
            "zero_shot": {},
            "my_rm": {"kind": "reward_model", "model": "rm"},
            "my_dpo": {"kind": "dpo", "policy": "tiny-policy", "reference": "tiny", "beta": BETA},
        },
    )
    write_config(root, config)
    snakemake(root, "genies_table")
    return root


def test_both_appear_in_genies_table_under_their_base(workdir):
    rows = {r["intervention"]: r for r in query(workdir, "select * from genies_table")}
    assert set(rows) == {"zero_shot", "my_rm", "my_dpo"}
    for name in ("my_rm", "my_dpo"):
        assert rows[name]["model"] == "tiny"
        assert rows[name]["complete_shifts"] == rows[name]["shifts"] == 2
        assert rows[name]["avg_differential_elicitation"] is not None
        assert rows[name]["avg_rms_calibration_error"] is not None
    assert "my_rm" in (workdir / "results/genies_table/tiny.md").read_text()
    # their DE is the same formula over the same baseline and capability as zero-shot's
    cells = query(workdir, "select * from cells where intervention = 'my_rm' order by shift_id")
    for cell in cells:
        acc = query(
            workdir,
            "select avg(correct::double) as a from predictions where intervention = 'my_rm' "
            f"and eval = '{cell['target']}' and train = 'none'",
        )[0]["a"]
        assert cell["generalization_accuracy"] == pytest.approx(acc)
        expected = metrics.differential_elicitation(
            acc, cell["baseline_accuracy"], cell["capability"]
        )
        assert cell["differential_elicitation"] == pytest.approx(expected)


def test_dpo_comes_from_the_forward_jobs_and_the_policy_gets_plain_log_probs_only(workdir):
    policy = pq.read_table(workdir / "results/forward/tiny-policy/tgt_b.parquet")
    passes = {(r["split"], r["stimulus"]) for r in policy.select(["split", "stimulus"]).to_pylist()}
    assert passes == {("test", "plain")}
    reference = read_scores(
        workdir / "results/forward/tiny/tgt_b.parquet", split="test", stimulus="plain"
    )
    reward = {
        (e, r): BETA * (lp - lp_ref)
        for e, r, lp, lp_ref in zip(
            policy["example_id"].to_pylist(),
            policy["response_index"].to_pylist(),
            policy["logprob_sum"].to_pylist(),
            reference["logprob_sum"].to_pylist(),
            strict=True,
        )
    }
    pred = pq.read_table(workdir / "results/predictions/tiny/my_dpo/none/tgt_b.parquet")
    for row in pred.to_pylist():
        margin = (
            reward[(row["example_id"], row["preferred_response"])]
            - reward[(row["example_id"], row["dispreferred_response"])]
        )
        assert row["prob_preferred"] == pytest.approx(1 / (1 + np.exp(-margin)))
    assert not (workdir / "results/predictions/tiny-policy").exists()


def test_the_classifier_is_scored_once_per_dataset_and_nothing_reruns(workdir):
    runs = query(workdir, "select model, dataset from runs where job = 'score_reward_model'")
    assert sorted((r["model"], r["dataset"]) for r in runs) == [
        ("rm", d) for d in ("ref_d", "src_a", "tgt_b", "tgt_c")
    ]
    assert planned_jobs(workdir) == {}
