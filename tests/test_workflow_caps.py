"""End to end with example caps, as the default config runs, and what each setting reruns.

Every other end-to-end config uses all examples; the embedded default caps them. Here the
fixture datasets (12 train / 6 test examples) are capped to 6 / 4, and each setting that
changes results is changed once to check that exactly the jobs it affects are planned; so is
each package version (a simulated upgrade: tests/fake_versions.py).
"""

import copy
from collections import Counter

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from genies.io import read_provenance
from genies.results.metrics import rms_calibration_error

from .fixtures import TRAINED_INTERVENTIONS, make_genies_folder, workflow_config
from .workflow import DOWNSTREAM, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.e2e
CAPS = {"train_examples": 6, "test_examples": 4}
INTERVENTIONS = {
    "zero_shot": {},
    "random": {},
    "few_shot": {"n_shots": 2},
    "mms": {"n_units": 2},
    "lora": TRAINED_INTERVENTIONS["lora"],
}
# What every rerun ends with: the database and what is made from it, per model.
CONFIGS = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-caps")
    data = make_genies_folder(root / "genies-data")
    config = workflow_config(
        data, interventions=INTERVENTIONS, capability_interventions=["lora"], caps=CAPS
    )
    write_config(root, config)
    snakemake(root, "genies_table")
    CONFIGS[root] = config
    return root


def query(workdir, sql, params=()):
    con = duckdb.connect(str(workdir / "results/results.duckdb"), read_only=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def test_every_job_reads_only_the_first_examples(workdir):
    # test splits: the first 4 examples of each dataset, whichever job evaluated them
    rows = query(
        workdir,
        "select intervention, eval, count(distinct example_id), max(example_id) "
        "from predictions group by intervention, eval",
    )
    assert rows and all(n == 4 and last.endswith("/test/00003") for _, _, n, last in rows), rows
    scores = pq.read_table(workdir / "results/forward/tiny/src_a.parquet").to_pydict()
    counted = Counter(zip(scores["split"], scores["stimulus"], strict=True))
    # src_a: 2 responses; mms trains on its first 6 train examples
    assert counted == {("test", "plain"): 8, ("train", "plain"): 12}
    fit = read_provenance(workdir / "results/forward/tiny/src_a.parquet")
    assert fit["params"]["limits"] == {"train": 6, "test": 4}
    adapter = workdir / "results/tune/tiny/lora/src_a/reward_model.json"
    assert '"n_examples": 6' in adapter.read_text()


def test_standard_rms_of_the_table_is_recomputed_from_the_predictions(workdir):
    """genies_table's RMS column is the mean over GENIES shifts of each cell's RMS, and a
    cell's RMS is that of its generalisation predictions (the outcome is `correct`)."""
    for intervention in ("zero_shot", "mms", "random"):
        cells = query(
            workdir,
            "select source, target, rms_calibration_error from cells "
            "where model = 'tiny' and intervention = ?",
            [intervention],
        )
        want = []
        for source, target, rms in cells:
            train = "none" if intervention in ("zero_shot", "random") else source
            prob, correct = zip(*query(
                workdir,
                "select prob_preferred, correct from predictions where model = 'tiny' "
                "and intervention = ? and train = ? and eval = ? order by example_id, pair_index",
                [intervention, train, target],
            ), strict=True)  # fmt: skip
            expected = rms_calibration_error(np.array(prob), outcomes=np.array(correct))
            assert rms == pytest.approx(expected, abs=1e-12), (intervention, target)
            want.append(expected)
        ((table_rms,),) = query(
            workdir,
            "select avg_rms_calibration_error from genies_table "
            "where model = 'tiny' and intervention = ?",
            [intervention],
        )
        assert table_rms == pytest.approx(np.mean(want), abs=1e-12)
    # the random baseline is calibrated: probability 0.5, a fair coin decides `correct`
    ((random_rms,),) = query(
        workdir, "select avg_rms_calibration_error from genies_table where intervention = 'random'"
    )
    assert random_rms < 0.2


def changed(config, path, value):
    """A copy of `config` with the setting at `path` ("a.b.c") set to `value`."""
    config = copy.deepcopy(config)
    node = config
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return config


# setting -> the jobs a change of it plans (besides DOWNSTREAM)
RERUNS = {
    "caps.test_examples": (
        3,
        # every dataset's forward pass (its test limit) and every prediction; one forward
        # job holds a dataset's train activations too, so the probe fits rerun on them; the
        # trainings rerun to predict fewer examples (their training is reused,
        # test_tune_job.py)
        dict(forward=4, fit_probe=3, few_shot_prompts=5, score_few_shot=4,
             predict_zero_shot=4, predict_random=4, predict_few_shot=5, predict_probe=5,
             tune=3),
    ),
    "caps.train_examples": (
        5,
        # the forward passes of the datasets probes train on (and so their zero-shot
        # predictions, from the same job's test split); every training; few-shot
        # demonstrations come from the train split
        dict(forward=3, predict_zero_shot=3, fit_probe=3, predict_probe=5, tune=3,
             few_shot_prompts=5, score_few_shot=4, predict_few_shot=5),
    ),
    "scoring.batch_tokens": (
        256,
        dict(forward=4, predict_zero_shot=4, fit_probe=3, predict_probe=5, score_few_shot=4,
             predict_few_shot=5),
    ),
    "scoring.normalisation": ("mean", dict(predict_zero_shot=4, predict_few_shot=5)),
    "seed": (
        1,
        dict(predict_random=4, few_shot_prompts=5, score_few_shot=4, predict_few_shot=5,
             fit_probe=3, predict_probe=5, tune=3),
    ),
    "interventions.lora.steps": (6, dict(tune=3)),
    "interventions.few_shot.n_shots": (
        3,
        dict(few_shot_prompts=5, score_few_shot=4, predict_few_shot=5),
    ),
}  # fmt: skip


@pytest.mark.parametrize("setting", list(RERUNS))
def test_a_changed_setting_reruns_exactly_what_depends_on_it(workdir, setting):
    value, jobs = RERUNS[setting]
    write_config(workdir, changed(CONFIGS[workdir], setting, value))
    try:
        planned = planned_jobs(workdir)
    finally:
        write_config(workdir, CONFIGS[workdir])
    assert planned == Counter(jobs) + DOWNSTREAM, setting
    assert planned_jobs(workdir) == Counter()


# The jobs that run the model or compute with torch, and what reads their outputs.
MODEL_JOBS = dict(prepare_model=1, forward=4, predict_zero_shot=4, fit_probe=3, predict_probe=5,
                  score_few_shot=4, predict_few_shot=5, tune=3)  # fmt: skip
# package -> the jobs an upgrade of it plans (besides DOWNSTREAM); None: no job at all
UPGRADES = {
    # the tiny model is built with torch and transformers and its tokenizer written with
    # tokenizers: its preparation reruns, and so every job downstream of it
    "torch": MODEL_JOBS,
    "transformers": MODEL_JOBS,
    "tokenizers": MODEL_JOBS,
    "peft": dict(tune=3),
    "gguf": None,  # only the preparation of a GGUF source (smollm2), not of the tiny model
    "bitsandbytes": None,  # only a 4-bit training (quantization: nf4)
    "numpy": None,  # no rule's numbers are tied to it (README, "Staleness")
}


@pytest.mark.parametrize("package", list(UPGRADES))
def test_an_upgraded_package_reruns_exactly_what_it_affects(workdir, package):
    jobs = UPGRADES[package]
    planned = planned_jobs(workdir, versions={package: "99.0"})
    assert planned == (Counter() if jobs is None else Counter(jobs) + DOWNSTREAM), package
    assert planned_jobs(workdir) == Counter()
