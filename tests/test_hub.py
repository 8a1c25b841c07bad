"""`source: hf`: models by Hugging Face Hub id and revision (genies.models.hub), without network.

A loopback stand-in for the Hub (tests/fake_hub.py) serves tiny models. huggingface_hub reads
HF_ENDPOINT, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE when it is imported, so every preparation runs
in a child process with its own environment, as a Snakemake job does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from genies.data.materialise import materialise
from genies.forward.job import run_forward
from genies.forward.zero_shot import write_zero_shot_predictions
from genies.io import read_provenance
from genies.models.hub import SIDE_FILES, choose_files
from genies.models.loading import LINK_FILE, MODEL_INFO_FILE, ModelError, load_model
from genies.models.prepare import prepare_model
from genies.results.aggregate import models_table, runs_table

from .fake_hub import FakeHub
from .fixtures import make_genies_folder, tiny_reward_model_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, sys
from genies.models.prepare import prepare_model
outcomes = []
for spec, out in json.loads(sys.argv[1]):
    try:
        prepare_model(spec, out)
        outcomes.append({"ok": True})
    except Exception as exc:
        outcomes.append({"error": type(exc).__name__, "message": str(exc)})
print("OUTCOMES " + json.dumps(outcomes))
"""


def model_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != MODEL_INFO_FILE}


def hub_environment(hf_home: Path, endpoint: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


def prepare_in_child(cases: dict, root: Path, env: dict) -> dict:
    """Prepare each `name: spec` into root/name in one child process; name -> outcome."""
    jobs = [(spec, str(root / name)) for name, spec in cases.items()]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("OUTCOMES ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return dict(zip(cases, json.loads(lines[0].removeprefix("OUTCOMES ")), strict=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The fake Hub's repositories, and what preparing them online, with a token, offline and
    with the Hub gone gave (one child process each)."""
    root = tmp_path_factory.mktemp("hub")
    for seed in (0, 1):
        prepare_model({"source": "tiny", "seed": seed}, root / f"tiny{seed}")
    tiny0, tiny1 = model_files(root / "tiny0"), model_files(root / "tiny1")
    sharded = root / "sharded"
    load_model(root / "tiny0", device="cpu", dtype="float32").model.save_pretrained(
        sharded, max_shard_size="100KB"
    )
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and (sharded / "model.safetensors.index.json").is_file()
    rm = model_files(tiny_reward_model_dir(root / "rm-local"))
    side = {k: v for k, v in tiny0.items() if k != "model.safetensors"}

    hub = FakeHub(lifetime_s=600)
    c1 = hub.add_repo("org/tiny", tiny0)
    hub.add_branch("org/tiny", "v1", c1)
    c2 = hub.add_repo("org/tiny", tiny1)  # main moves on
    hub.add_repo(
        "org/sharded",
        {**side, **model_files(sharded), "consolidated.safetensors": tiny0["model.safetensors"],
         "pytorch_model.bin": b"never fetched"},
    )  # fmt: skip
    hub.add_repo("org/partial", {**side, **model_files(sharded)})
    lacking = {k: v for k, v in model_files(sharded).items() if k != shards[0]}
    hub.add_repo("org/lacking", {**side, **lacking})
    hub.add_repo("org/pickle-only", {**side, "pytorch_model.bin": b"a pickle, never fetched"})
    hub.add_repo("org/gated", tiny0, gated=True, token="hf_good")
    hub.add_repo("org/rm", rm)
    hf_home = root / "hf_home"
    out = root / "prepared"
    outcomes = {}
    with hub:
        env = hub_environment(hf_home, hub.url)
        outcomes["online"] = prepare_in_child(
            {
                "main": {"source": "hf", "repo": "org/tiny"},
                "tag": {"source": "hf", "repo": "org/tiny", "revision": "v1"},
                "hash": {"source": "hf", "repo": "org/tiny", "revision": c1},
                "linked": {"source": "hf", "repo": "org/tiny", "revision": "v1", "link": True},
                "sharded": {"source": "hf", "repo": "org/sharded"},
                "partial": {"source": "hf", "repo": "org/partial"},
                "lacking": {"source": "hf", "repo": "org/lacking"},
                "pickle": {"source": "hf", "repo": "org/pickle-only"},
                "gated": {"source": "hf", "repo": "org/gated"},
                "missing": {"source": "hf", "repo": "org/nope", "revision": "v2"},
                "norev": {"source": "hf", "repo": "org/tiny", "revision": "nobranch"},
                "rm": {"source": "hf", "repo": "org/rm"},
            },
            out,
            env,
        )
        online_requests = list(hub.requests)
        outcomes["bad_token"] = prepare_in_child(
            {"gated_bad": {"source": "hf", "repo": "org/gated"}},
            out,
            {**env, "HF_TOKEN": "hf_bad"},
        )
        outcomes["token"] = prepare_in_child(
            {"gated_ok": {"source": "hf", "repo": "org/gated"}},
            out,
            {**env, "HF_TOKEN": "hf_good"},
        )
        before_offline = len(hub.requests)
        # an interrupted download: a shard missing from the cache's snapshot
        snapshot = next((hf_home / "hub/models--org--partial/snapshots").iterdir())
        (snapshot / shards[-1]).unlink()
        hub.add_repo("org/tiny", tiny0)  # main moves again: offline must not see it
        outcomes["offline"] = prepare_in_child(
            {
                "off_main": {"source": "hf", "repo": "org/tiny"},
                "off_hash": {"source": "hf", "repo": "org/tiny", "revision": c1},
                "off_never": {"source": "hf", "repo": "org/never"},
                "off_sharded": {"source": "hf", "repo": "org/sharded"},
                "off_partial": {"source": "hf", "repo": "org/partial"},
            },
            out,
            {**env, "HF_HUB_OFFLINE": "1"},
        )
        offline_requests = hub.requests[before_offline:]
    outcomes["dead_hub"] = prepare_in_child(
        {"dead_tag": {"source": "hf", "repo": "org/tiny", "revision": "v1"}},
        out,
        hub_environment(hf_home, f"http://127.0.0.1:{free_port()}"),
    )
    flat = {name: o for group in outcomes.values() for name, o in group.items()}
    return {
        "root": root,
        "out": out,
        "hf_home": hf_home,
        "c1": c1,
        "c2": c2,
        "shards": shards,
        "outcomes": flat,
        "online_requests": online_requests,
        "offline_requests": offline_requests,
        "auth": [a for _, path, a in hub.requests if "org/gated" in path],
    }


def description(world, name) -> dict:
    assert world["outcomes"][name] == {"ok": True}, world["outcomes"][name]
    return json.loads((world["out"] / name / MODEL_INFO_FILE).read_text())["description"]


def error(world, name) -> str:
    outcome = world["outcomes"][name]
    assert outcome.get("error") == "ModelError", outcome
    assert not (world["out"] / name).exists()
    return outcome["message"]


def fetched(requests, repo) -> set[str]:
    return {
        path.rsplit("/", 1)[-1]
        for method, path, _ in requests
        if method == "GET" and f"/{repo}/resolve/" in path
    }


def test_a_branch_or_tag_resolves_to_its_commit_once(world):
    c1, c2 = world["c1"], world["c2"]
    got = {n: description(world, n) for n in ("main", "tag", "hash")}
    assert {n: (d["revision"], d["commit"]) for n, d in got.items()} == {
        "main": ("main", c2),
        "tag": ("v1", c1),
        "hash": (c1, c1),
    }
    assert all(d["source"] == "hf" and d["repo"] == "org/tiny" for d in got.values())
    # the weights are those of the commit: main's (seed 1) differ from v1's (seed 0)
    main = load_model(world["out"] / "main", device="cpu", dtype="float32").model
    tag = load_model(world["out"] / "tag", device="cpu", dtype="float32").model
    tiny1 = load_model(world["root"] / "tiny1", device="cpu", dtype="float32").model
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(main(ids).logits, tiny1(ids).logits)
        assert not torch.equal(main(ids).logits, tag(ids).logits)


def test_files_are_hard_links_into_the_cache_or_the_cache_folder_itself(world):
    d = description(world, "tag")
    folder = world["out"] / "tag"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*d["files"], MODEL_INFO_FILE])
    snapshot = world["hf_home"] / "hub/models--org--tiny/snapshots" / world["c1"]
    for name in d["files"]:
        # the same inode as the cache's blob: no second copy of the weights
        assert (folder / name).stat().st_ino == (snapshot / name).resolve().stat().st_ino
    linked = description(world, "linked")
    assert linked["link"] is True and linked["commit"] == world["c1"]
    link = json.loads((world["out"] / "linked" / LINK_FILE).read_text())
    assert Path(link["path"]) == snapshot
    loaded = load_model(world["out"] / "linked", device="cpu", dtype="float32")
    assert loaded.model.config.num_hidden_layers == 2
    assert linked["parameters"] == d["parameters"] == loaded.model.num_parameters()


def test_only_the_indexed_shards_config_and_tokenizer_are_fetched(world):
    d = description(world, "sharded")
    expected = ["model.safetensors.index.json", *world["shards"]]
    assert d["files"][: len(expected)] == expected
    assert set(d["files"][len(expected) :]) <= set(SIDE_FILES)
    assert {"config.json", "tokenizer.json"} <= set(d["files"])
    got = fetched(world["online_requests"], "org/sharded")
    assert got == set(d["files"])
    assert "consolidated.safetensors" not in got and "pytorch_model.bin" not in got
    load_model(world["out"] / "sharded", device="cpu", dtype="float32")


def test_an_index_naming_absent_shards_is_refused_before_downloading(world):
    message = error(world, "lacking")
    assert "org/lacking@main" in message and f"lacks: ['{world['shards'][0]}']" in message
    assert fetched(world["online_requests"], "org/lacking") == {"model.safetensors.index.json"}


def test_a_pickle_only_repository_is_refused_before_downloading(world):
    message = error(world, "pickle")
    assert "org/pickle-only@main" in message and "pytorch_model.bin" in message
    assert "safetensors" in message and "refs/pr/" in message
    assert fetched(world["online_requests"], "org/pickle-only") == set()


def test_missing_repository_and_revision(world):
    message = error(world, "missing")
    assert "org/nope@v2" in message and "no such repository" in message
    assert "HF_TOKEN" in message
    message = error(world, "norev")
    assert "org/tiny@nobranch" in message and "no revision 'nobranch'" in message


def test_gated_repository_needs_the_licence_and_a_token(world):
    message = error(world, "gated")
    assert "org/gated@main" in message and "gated" in message and "no token was sent" in message
    assert "accept its licence" in message and "HF_TOKEN" in message
    assert "hf auth login" in message
    assert "has not been granted access" in error(world, "gated_bad")
    assert description(world, "gated_ok")["repo"] == "org/gated"
    assert {"Bearer hf_good", "Bearer hf_bad"} <= set(world["auth"])


def test_offline_the_cache_decides(world):
    assert world["offline_requests"] == []
    # main resolves through the cache's refs/main: c2, although the Hub's main has moved on
    assert description(world, "off_main")["commit"] == world["c2"]
    assert description(world, "off_hash")["commit"] == world["c1"]
    assert description(world, "off_sharded")["files"] == description(world, "sharded")["files"]
    message = error(world, "off_partial")
    assert "org/partial@main" in message and "holds only part of it" in message
    assert world["shards"][-1] in message
    message = error(world, "off_never")
    assert "org/never@main" in message and "not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE" in message


def test_an_unreachable_hub_falls_back_to_the_cache(world):
    assert description(world, "dead_tag")["commit"] == world["c1"]


def test_a_hub_sequence_classifier_loads_as_one(world):
    d = description(world, "rm")
    assert d["commit"] and d["model_type"] == "llama"
    local = world["root"] / "rm-local"
    ours = load_model(world["out"] / "rm", "cpu", "float32", task="sequence_classification")
    theirs = load_model(local, "cpu", "float32", task="sequence_classification")
    assert type(ours.model).__name__ == "LlamaForSequenceClassification"
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(ours.model(ids).logits, theirs.model(ids).logits)


def test_runs_record_the_commit_and_predictions_inherit_it(world, tmp_path):
    data = make_genies_folder(tmp_path / "genies")
    materialise(data, "tgt_b", "test", tmp_path / "test.parquet")
    scores = tmp_path / "forward.parquet"
    run_forward(data_files={"test": tmp_path / "test.parquet"}, model_dir=world["out"] / "tag",
                scores_path=scores, activations_path=None, model_name="m", dataset="tgt_b",
                work={"test": {"plain": {}}},
                scoring={"batch_tokens": 256, "device": "cpu", "dtype": "float32"},
                job={"threads": 1})  # fmt: skip
    where = {"source": "hf", "repo": "org/tiny", "revision": "v1", "commit": world["c1"]}
    assert read_provenance(scores)["models"] == {"m": where}
    predictions = tmp_path / "predictions.parquet"
    write_zero_shot_predictions(tmp_path / "test.parquet", scores, predictions, "m", "tgt_b", "sum")
    assert read_provenance(predictions)["models"] == {"m": where}
    runs = runs_table([scores, predictions])
    assert [json.loads(m) for m in runs.column("models").to_pylist()] == [{"m": where}] * 2
    rows = models_table(runs).to_pylist()
    assert [{k: r[k] for k in ("model", "repo", "revision", "commit", "runs")} for r in rows] == [
        {"model": "m", "repo": "org/tiny", "revision": "v1", "commit": world["c1"], "runs": 2}
    ]
    assert pq.read_table(predictions).num_rows > 0


def test_choose_files_checks_the_index():
    names = ["config.json", "tokenizer.json", "model.safetensors.index.json", "a.safetensors"]
    index = json.dumps({"weight_map": {"x": "a.safetensors", "y": "a.bin"}})
    with pytest.raises(ModelError, match="names weights other than safetensors"):
        choose_files(names, lambda: index, "r@main")
    index = json.dumps({"weight_map": {"x": "b.safetensors", "y": "a.safetensors"}})
    assert choose_files(names, lambda: index, "r@main") == (
        "model.safetensors.index.json",
        "a.safetensors",
        "b.safetensors",
        "config.json",
        "tokenizer.json",
    )
    with pytest.raises(ModelError, match="not a shard index"):
        choose_files(names, lambda: "[]", "r@main")
    only = ["config.json", "tokenizer.json", "adapter_model.safetensors"]
    with pytest.raises(ModelError, match="neither model.safetensors nor"):
        choose_files(only, lambda: "", "r@main")
    assert choose_files(["sub/model.safetensors", *names[:2], "model.safetensors"], None, "r") == (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
    )
