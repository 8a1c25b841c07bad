"""End to end: distributions of the user's own (a local JSONL/CSV pair file, a Hub dataset
through the loopback stand-in for the Hub) as sources and targets of the user's shift file,
with their cells, table rows and viewer entries; an edited file reruns exactly what read it,
a moved Hub branch nothing."""

import hashlib
import json
import os
from unittest import mock

import pyarrow.parquet as pq
import pytest

from .fake_hub import FakeHub
from .fixtures import make_genies_folder, preference_pairs, workflow_config, write_rows
from .test_distributions import MESSAGES
from .workflow import planned_jobs, query, snakemake, write_config

pytestmark = pytest.mark.e2e
TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
SHIFTS = [
    {"source": "mine", "target": "tgt_b"},
    {"source": "src_a", "target": "mine"},
    {"source": "mine", "target": "theirs"},
]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def hub():
    with FakeHub(lifetime_s=1200) as hub:
        files = {"data/train.jsonl": jsonl(MESSAGES * 2), "data/test.jsonl": jsonl(MESSAGES)}
        hub.commit = hub.add_repo("org/prefs", files, repo_type="dataset")
        yield hub


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, hub):
    root = tmp_path_factory.mktemp("e2e-distributions")
    data = make_genies_folder(root / "genies-data")
    write_rows(root / "my-data/train.jsonl", preference_pairs(12, 5))
    write_rows(root / "my-data/test.csv", preference_pairs(6, 6))
    (root / "my_shifts.json").write_text(json.dumps(SHIFTS))
    distributions = {
        "mine": {
            "files": {"train": "my-data/train.jsonl", "test": "my-data/test.csv"},
            "layout": "pairs",
            "columns": {"prompt": "question"},
            "prompt_template": TEMPLATE,
        },
        "theirs": {"hub": "org/prefs", "layout": "messages"},
    }
    config = workflow_config(data, shifts="my_shifts.json", distributions=distributions)
    write_config(root, config)
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(root / "hf_home")}
    with mock.patch.dict(os.environ, {**env, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}):
        snakemake(root, "genies_table")
        yield root


def test_they_are_materialised_like_genies_datasets(workdir):
    mine = pq.read_table(workdir / "results/data/mine/test.parquet")
    tgt_b = pq.read_table(workdir / "results/data/tgt_b/test.parquet")
    assert mine.schema.remove_metadata() == tgt_b.schema.remove_metadata()
    first = mine.to_pylist()[0]
    assert first["prompt"] == TEMPLATE.replace("{prompt}", preference_pairs(6, 6)[0]["question"])
    assert first["example_id"] == "mine/test/00000"


def test_the_datasets_table_records_where_each_came_from(workdir, hub):
    rows = {
        (r["dataset"], r["split"]): r
        for r in query(workdir, "select * from datasets where dataset in ('mine', 'theirs')")
    }
    sha = hashlib.sha256((workdir / "my-data/test.csv").read_bytes()).hexdigest()
    mine = rows[("mine", "test")]
    assert (mine["origin"], mine["commit"], mine["examples"]) == ("files", None, 6)
    assert mine["files"] == [{"path": "my-data/test.csv", "sha256": sha}]
    theirs = rows[("theirs", "test")]
    assert (theirs["origin"], theirs["location"], theirs["commit"]) == (
        "hub",
        "org/prefs",
        hub.commit,
    )
    assert theirs["files"] == [] and theirs["dropped_rows"] == 0
    tgt_b = query(workdir, "select origin from datasets where dataset = 'tgt_b'")
    assert {r["origin"] for r in tgt_b} == {"genies"}


def test_every_shift_has_its_cells_and_viewer_entries(workdir):
    cells = query(workdir, "select shift_id, generalization_accuracy, pairs from cells")
    assert sorted(c["shift_id"] for c in cells) == sorted(
        f"{s['source']}__{s['target']}" for s in SHIFTS
    )
    assert all(c["generalization_accuracy"] is not None for c in cells)
    viewer = workdir / "results/viewer/tiny/data"
    text = "".join(p.read_text() for p in viewer.glob("*mine__theirs*.js"))
    assert json.dumps(MESSAGES[0]["chosen"][-1]["content"]) in text


def test_an_edited_file_reruns_what_read_it_and_a_moved_branch_nothing(workdir, hub):
    assert planned_jobs(workdir) == {}
    hub.add_repo("org/prefs", {"data/test.jsonl": jsonl(MESSAGES[:1])}, repo_type="dataset")
    assert planned_jobs(workdir) == {}  # the pinned commit stays until pinned again
    with open(workdir / "my-data/test.csv", "a") as f:
        f.write('"Write about summer (6).",good summer,winter 1,6\n')
    jobs = planned_jobs(workdir)
    assert jobs["pin_distribution"] == 1
    assert jobs["materialise_distribution"] == 2
    assert jobs["forward"] == 1
    assert "materialise" not in jobs


def test_a_distribution_named_like_a_genies_dataset_is_refused(workdir, tmp_path):
    config = json.loads(json.dumps(workflow_config(workdir / "genies-data")))
    config["distributions"] = {"tgt_b": {"hub": "org/prefs", "layout": "messages"}}
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "--dry-run", "genies_table", check=False)
    assert proc.returncode != 0
    assert "tgt_b is the name of a GENIES dataset" in proc.stdout + proc.stderr
