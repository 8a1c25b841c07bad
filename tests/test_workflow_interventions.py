"""End to end with every intervention (zero-shot, random, few-shot, probes, reward models)."""

from collections import Counter

import duckdb
import pyarrow.parquet as pq
import pytest

from genies.pipeline.config import validate_config
from genies.pipeline.plan import Plan

from .fixtures import ALL_INTERVENTIONS, make_genies_folder, workflow_config
from .workflow import DOWNSTREAM, planned_jobs, planned_outputs, snakemake, write_config

pytestmark = pytest.mark.e2e
CONFIGS = {}  # workdir -> its validated config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-interventions")
    data = make_genies_folder(root / "genies-data")
    config = workflow_config(
        data, interventions=ALL_INTERVENTIONS, capability_interventions=["lora", "zero_shot"]
    )
    write_config(root, config)
    snakemake(root, "genies_table")
    CONFIGS[root] = validate_config(config)
    return root


def test_every_intervention_predicts_every_needed_pair(workdir):
    plan = Plan(CONFIGS[workdir])
    for path in plan.prediction_files():
        assert (workdir / path).exists(), path
        assert pq.read_metadata(workdir / path).num_rows > 0
    con = duckdb.connect(str(workdir / "results/results.duckdb"), read_only=True)
    table = con.execute("select intervention, complete_shifts from genies_table").fetchall()
    con.close()
    assert dict(table) == {name: 2 for name in ALL_INTERVENTIONS}
    assert (workdir / "results/genies_table/tiny.md").read_text().strip()


def test_probe_parameter_change_reruns_only_that_probe(workdir):
    config = dict(CONFIGS[workdir])
    config["interventions"] = {**config["interventions"], "mms": {"n_units": 3}}
    write_config(workdir, config)
    try:
        jobs = planned_jobs(workdir)
        outputs = planned_outputs(workdir)
    finally:
        write_config(workdir, CONFIGS[workdir])
    # mms is fitted on the 3 datasets that train it and predicts 5 (train, eval) pairs.
    assert jobs == Counter(fit_probe=3, predict_probe=5) + DOWNSTREAM
    assert all("/mms/" in p for p in outputs if p.startswith(("results/fit", "results/pred")))
    assert planned_jobs(workdir) == Counter()


def test_same_config_gives_identical_predictions(workdir):
    """Every job behind the prediction files of one training set (src_a: each intervention
    trained or prompted on it) and of one untrained target (tgt_b), forward passes included,
    run again gives the same predictions. One training set, not all: the same code runs for
    the others, and the whole rerun took five minutes of the suite."""
    files = [
        e["path"]
        for e in Plan(CONFIGS[workdir]).expectations()
        if any(g[2] == "src_a" or (g[2] == "none" and g[3] == "tgt_b") for g in e["groups"])
    ]
    interventions = {path.split("/")[3] for path in files}
    assert interventions == set(ALL_INTERVENTIONS), interventions
    before = {path: pq.read_table(workdir / path) for path in files}
    written = {path: (workdir / path).stat().st_mtime_ns for path in files}
    rules = ["forward", "few_shot_prompts", "score_few_shot", "predict_few_shot", "fit_probe"]
    rules += ["predict_probe", "tune", "predict_random", "predict_zero_shot"]
    snakemake(workdir, *files, "--forcerun", *rules)
    for path, table in before.items():
        again = pq.read_table(workdir / path)
        assert again.equals(table), path
        assert (workdir / path).stat().st_mtime_ns > written[path], f"{path} was not rebuilt"


def test_capability_and_source_runs_share_training_jobs(workdir):
    """Every dataset is trained once per method, whether it is a source or a target reference."""
    outputs = planned_outputs(workdir, extra=("--forcerun", "tune"))
    tuned = sorted(p for p in outputs if p.startswith("results/tune/"))
    # src_a is the source of both shifts; ref_d is tgt_c's target reference, trained for the
    # capability (lora) and for every method's ID target accuracy; tgt_c is never trained on.
    trained = ("ref_d", "src_a", "tgt_b")
    lora = [f"results/tune/tiny/lora/{d}" for d in trained]
    prompt = [f"results/tune/tiny/prompt_tuning/{d}" for d in trained]
    assert [p for p in tuned if not p.endswith(".parquet")] == lora + prompt
    # each training job also predicts every dataset its reward model is evaluated on
    assert [p for p in tuned if p.endswith(".parquet")] == []
    predicted = sorted(p for p in outputs if p.startswith("results/predictions/tiny/lora/"))
    assert predicted == [f"results/predictions/tiny/lora/{d}.parquet" for d in trained]
    con = duckdb.connect(str(workdir / "results/results.duckdb"), read_only=True)
    winners = con.execute("select distinct capability_intervention from cells").fetchall()
    con.close()
    assert winners and {w for (w,) in winners} <= {"lora", "zero_shot"}
