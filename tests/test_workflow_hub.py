"""End to end: run models, a sequence-classifier reward model and a DPO policy named by Hugging
Face Hub id (`source: hf`), prepared through a loopback stand-in for the Hub (tests/fake_hub.py);
the resolved commits reach results.duckdb, and a moved branch reruns nothing."""

import json

import pytest

from genies.models.loading import MODEL_INFO_FILE
from genies.models.prepare import prepare_model

from .fake_hub import FakeHub
from .fixtures import make_genies_folder, tiny_reward_model_dir, workflow_config
from .test_hub import model_files
from .workflow import planned_jobs, query, snakemake, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-hub")
    data = make_genies_folder(root / "genies-data")
    for seed in (0, 1):
        prepare_model({"source": "tiny", "seed": seed}, root / f"tiny{seed}")
    hub = FakeHub(lifetime_s=900)
    commits = {
        "org/tiny": hub.add_repo("org/tiny", model_files(root / "tiny0")),
        "org/tiny-policy": hub.add_repo("org/tiny-policy", model_files(root / "tiny1")),
        "org/rm": hub.add_repo(
            "org/rm", model_files(tiny_reward_model_dir(root / "rm", chat_template=True))
        ),
    }
    config = workflow_config(
        data,
        shifts="extreme",  # one shift: what is checked here does not depend on how many
        models={
            "tiny": {"source": "hf", "repo": "org/tiny", "revision": "main"},
            "tiny-policy": {"source": "hf", "repo": "org/tiny-policy"},
            "rm": {"source": "hf", "repo": "org/rm", "link": True, "chat_template": True},
        },
        interventions={
            "zero_shot": {},
            "my_rm": {"kind": "reward_model", "model": "rm"},
            "my_dpo": {"kind": "dpo", "policy": "tiny-policy", "reference": "tiny"},
        },
    )
    work = root / "work"
    work.mkdir()
    write_config(work, config)
    with hub, pytest.MonkeyPatch.context() as mp:
        for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
            mp.delenv(name, raising=False)
        mp.setenv("HF_HOME", str(root / "hf_home"))
        mp.setenv("HF_ENDPOINT", hub.url)  # the jobs inherit Snakemake's environment
        snakemake(work, "genies_table")
        hub.add_repo("org/tiny", model_files(root / "tiny1"))  # main moves on
        yield {"work": work, "commits": commits, "hub": hub}


def test_the_commits_are_in_the_models_table_and_every_run(run):
    commits, work = run["commits"], run["work"]
    rows = query(work, "select model, source, repo, revision, commit from models order by model")
    assert rows == [
        {"model": "rm", "source": "hf", "repo": "org/rm", "revision": "main",
         "commit": commits["org/rm"]},
        {"model": "tiny", "source": "hf", "repo": "org/tiny", "revision": "main",
         "commit": commits["org/tiny"]},
        {"model": "tiny-policy", "source": "hf", "repo": "org/tiny-policy", "revision": "main",
         "commit": commits["org/tiny-policy"]},
    ]  # fmt: skip
    for name in ("tiny", "tiny-policy", "rm"):
        info = json.loads((work / f"resources/models/{name}" / MODEL_INFO_FILE).read_text())
        assert (
            info["description"]["commit"] == rows[[r["model"] for r in rows].index(name)]["commit"]
        )
    runs = query(
        work, "select job, model, intervention, models from runs where job != 'materialise'"
    )
    assert runs
    for r in runs:
        models = json.loads(r["models"])
        expected = {
            "my_dpo": {"tiny", "tiny-policy"},
            "my_rm": {"rm"},
        }.get(r["intervention"], {r["model"]})
        assert set(models) == expected, r
        assert all(m["commit"] == commits[m["repo"]] for m in models.values()), r
    rows = query(work, "select intervention from genies_table where model = 'tiny'")
    assert {r["intervention"] for r in rows} == {"zero_shot", "my_rm", "my_dpo"}


def test_a_moved_branch_reruns_nothing_until_asked(run):
    work = run["work"]
    assert planned_jobs(work) == {}
    forced = planned_jobs(work, "genies_table", extra=("--forcerun", "resources/models/tiny"))
    assert forced["prepare_model"] == 1 and forced["forward"] > 0
    assert forced["predict_dpo"] > 0 and "score_reward_model" not in forced
