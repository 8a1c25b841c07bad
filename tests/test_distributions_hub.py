"""Distributions from the Hugging Face Hub, through a loopback stand-in for the Hub
(tests/fake_hub.py): a revision is pinned to its commit once, the pinned commit is what is read
(whatever the branch does later), offline runs use the cache, and Hub failures say what to do.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so every
step runs in a child process with its own environment."""

import json
import os
import subprocess
import sys

import pytest

from .fake_hub import FakeHub
from .test_distributions import MESSAGES, PAIRS

REPO = "org/prefs"
STEP = """
import json, sys
from genies.data.distributions import materialise_distribution, pin_source
from genies.errors import DataError
from genies.io import read_provenance
import pyarrow.parquet as pq

step, spec, pin, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    if step in ("pin", "both"):
        pin_source("theirs", spec, pin)
    if step in ("materialise", "both"):
        materialise_distribution("theirs", spec, "test", pin, out)
        prov = read_provenance(out)
        print(json.dumps({"prompts": pq.read_table(out)["prompt"].to_pylist(), **prov}))
    else:
        print(json.dumps(json.load(open(pin))))
except DataError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def hub():
    with FakeHub(lifetime_s=300) as hub:
        yield hub


def add_commit(hub, test_rows, **kw):
    files = {
        "README.md": b"# prefs\n",
        "data/train.jsonl": jsonl(PAIRS),
        "data/test.jsonl": jsonl(test_rows),
    }
    return hub.add_repo(REPO, files, repo_type="dataset", **kw)


def run_step(hub, tmp_path, step, spec, offline=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"))
    env.update(HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    pin, out = tmp_path / "source.json", tmp_path / "test.parquet"
    proc = subprocess.run(
        [sys.executable, "-c", STEP, step, json.dumps(spec), str(pin), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_branch_is_pinned_to_its_commit_and_read_from_it(hub, tmp_path):
    first = add_commit(hub, PAIRS[:3])
    spec = {"hub": REPO, "revision": "main", "layout": "pairs"}
    got = run_step(hub, tmp_path, "both", spec)
    assert got["prompts"] == ["Q0?", "Q1?", "Q2?"]
    assert (got["origin"], got["location"], got["revision"], got["commit"]) == (
        "hub",
        REPO,
        "main",
        first,
    )
    # The branch moves: the pinned distribution still reads its commit ...
    second = add_commit(hub, PAIRS)
    assert run_step(hub, tmp_path, "materialise", spec)["prompts"] == ["Q0?", "Q1?", "Q2?"]
    # ... until it is pinned again.
    got = run_step(hub, tmp_path, "both", spec)
    assert got["commit"] == second and len(got["prompts"]) == 4


def test_a_commit_a_data_dir_and_slices_of_one_split(hub, tmp_path):
    files = {"helpful/train.jsonl": jsonl(MESSAGES), "harmless/train.jsonl": jsonl(PAIRS)}
    commit = hub.add_repo(REPO, files, repo_type="dataset")
    hub.add_repo(REPO, {"helpful/train.jsonl": b""}, repo_type="dataset")  # main moves on
    spec = {"hub": REPO, "revision": commit, "data_dir": "helpful", "layout": "messages"}
    spec["splits"] = {"train": "train[:1]", "test": "train[1:]"}
    got = run_step(hub, tmp_path, "both", spec)
    assert got["commit"] == commit and got["prompts"] == ["Q1?", "Q2?"]
    downloaded = {
        p.relative_to(tmp_path / "hf_home").as_posix().split("/snapshots/")[-1]
        for p in (tmp_path / "hf_home").rglob("*.jsonl")
    }
    assert downloaded == {f"{commit}/helpful/train.jsonl"}


def test_offline_reads_the_cache_and_asks_for_nothing(hub, tmp_path):
    commit = add_commit(hub, PAIRS[:2])
    spec = {"hub": REPO, "layout": "pairs"}
    assert run_step(hub, tmp_path, "both", spec)["commit"] == commit
    asked = len(hub.requests)
    got = run_step(hub, tmp_path, "both", spec, offline=True)
    assert got["commit"] == commit and got["prompts"] == ["Q0?", "Q1?"]
    assert len(hub.requests) == asked
    got = run_step(hub, tmp_path, "pin", {**spec, "revision": "f" * 40}, offline=True)
    assert "not in the local Hugging Face cache" in got["error"]


@pytest.mark.parametrize(
    "repo, revision, message",
    [
        ("org/absent", "main", "no such repository on the Hub (check the id; if it is private"),
        (
            "org/gated",
            "main",
            "is gated and no token was sent; accept its licence on https://huggingface.co/datasets/org/gated",
        ),
        (REPO, "v9", "has no revision 'v9' (a branch, tag or full commit hash)"),
    ],
)
def test_hub_failures_say_what_to_do(hub, tmp_path, repo, revision, message):
    add_commit(hub, PAIRS)
    hub.add_repo("org/gated", {"data/test.jsonl": jsonl(PAIRS)}, repo_type="dataset", gated=True)
    got = run_step(hub, tmp_path, "pin", {"hub": repo, "revision": revision, "layout": "pairs"})
    assert got["error"].startswith(f"Hugging Face dataset {repo}@{revision}: ")
    assert message in got["error"]
