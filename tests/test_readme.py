"""Every command and query in README.md, run as written in a scratch copy of the repository.

The commands are read from README.md itself, not copied here: every line of a `bash` block
(a trailing backslash continues it; `#` starts a comment) and every `python` block (the DuckDB
queries). They run in a scratch copy of the repository (its tracked and unignored files, with
`.venv` linked to the environment running the tests) in which config.yaml is replaced by a tiny
config with the README's names: the model `smollm2-135m` is the tiny random Llama (`source:
tiny`; the real default takes 10 minutes, docs/performance.md), the data two small datasets
`alpaca_mmlu` and `spanish_output` forming the README's shift, the paper's runs a hand-made
`llama-30b` folder. `data_dir` is missing and `data_url` is a file:// archive, so the README's
download runs first, as the README says to do without the data; then the rest in the README's
order: the main command, the queries, one cell and its rerun, the linters.

A command runs as written, placeholders such as `<model>` filled in, unless DRY_RUN says why it
runs with `--dry-run` or SET_ASIDE why it does not run here. A command in neither list fails
the test, and so does an entry of either list that the README no longer has.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genies.data.download import DOWNLOAD_COMMAND

from .fixtures import workflow_config, write_dataset
from .test_download import make_tar
from .workflow import REPO, write_config

pytestmark = pytest.mark.e2e

README = REPO / "README.md"
SET_ASIDE = {
    "bash setup.sh": "the set-up: a new .venv takes minutes and PyPI; these tests run in one",
    ".venv/bin/pytest -q": "the tests, this one among them",
    "bash .ci/run": "CI: the set-up, the linters and the tests",
    "python3 -m venv .venv": "the GPU cluster's set-up, with a CUDA build of torch",
    ".venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu128": (
        "a CUDA build of torch, from an index this machine cannot reach"
    ),
    "bash lock.sh --upgrade": "changes .venv, from PyPI",
    "bash lock.sh": "asks PyPI for the hashes of every file of the lock",
}
DRY_RUN = {
    ".venv/bin/snakemake --cores all genies_table --configfile config/paper.yaml": (
        "the paper-sized preset needs GPUs and the LLaMA weights (bench/bench_rehearsal.py "
        "runs its DAG with the tiny model)"
    ),
    ".venv/bin/snakemake --profile slurm genies_table": (
        "needs a SLURM cluster (GENIES_SLURM_TEST=1 runs tests/test_slurm.py on one)"
    ),
}
# Fenced blocks that hold no command.
NOT_COMMANDS = {"yaml": "config excerpts", "json": "file excerpts", "": "messages, file layouts"}
PLACEHOLDERS = {
    "<model>": "smollm2-135m",
    "<intervention>": "mms",
    "<source>": "alpaca_mmlu",
    "<target>": "spanish_output",
}
MODEL = PLACEHOLDERS["<model>"]
SHIFT = {"source": "alpaca_mmlu", "target": "spanish_output"}
TEST_EXAMPLES = 4  # per dataset, 2 and 3 responses each: 4 and 8 pairs


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def bash_commands(code: str) -> list[str]:
    """One command per line, continuations joined, comments and extra blanks removed."""
    joined = re.sub(r"\\\n", " ", code)
    lines = (re.sub(r"(^|\s)#.*$", "", line) for line in joined.splitlines())
    return [" ".join(line.split()) for line in lines if line.strip()]


def readme_commands() -> tuple[list[str], list[str]]:
    """The README's shell commands (in order, each once) and its Python blocks."""
    commands, scripts = [], []
    for language, code in readme_blocks(README.read_text()):
        if language == "bash":
            commands += [c for c in bash_commands(code) if c not in commands]
        elif language == "python":
            scripts.append(code)
        else:
            assert language in NOT_COMMANDS, f"README block of unknown language {language!r}"
    return commands, scripts


def scratch_copy(dest: Path) -> Path:
    """The repository's tracked and unignored files (links kept as links), `.venv` linked."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if not (src.exists() or src.is_symlink()):  # deleted in the work tree
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel, follow_symlinks=False)
    (dest / ".venv").symlink_to(Path(sys.prefix))
    return dest


def published_folder(root: Path) -> Path:
    """A `results/` folder of the published runs: llama-30b's MMS and zero-shot on the shift,
    and the capability on its target."""
    runs = {
        "mms/llama-30b-alpaca_mmlu/spanish_output.json": [0.7, 0.2, 0.6, 0.4, 0.9, 0.6, 0.3, 0.8],
        "mms/llama-30b-alpaca_mmlu/alpaca_mmlu.json": [0.8, 0.6, 0.3, 0.7],
        "zero_shot/llama-30b-alpaca_mmlu/spanish_output.json": [1.0, 0.0] * 4,
    }
    for rel, probabilities in runs.items():
        path = root / "evaluations" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        accuracy = sum(p > 0.5 for p in probabilities) / len(probabilities)
        path.write_text(
            json.dumps({"eval_accuracy": accuracy, "eval_probabilities": probabilities})
        )
    capability = root / "target_tuned_capability/llama-30b/spanish_output.json"
    capability.parent.mkdir(parents=True)
    capability.write_text(
        json.dumps(
            {
                "target": "spanish_output",
                "target_reference": "spanish_output",
                "best_intervention": "mms",
                "best_intervention_accuracy": 0.9,
            }
        )
    )
    return root


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    data = root / "upstream"
    write_dataset(data, SHIFT["source"], 2, 1, n_train=8, n_test=TEST_EXAMPLES)
    write_dataset(data, SHIFT["target"], 3, 2, n_train=8, n_test=TEST_EXAMPLES)
    (data / "distribution_shifts").mkdir()
    (data / "distribution_shifts/GENIES.json").write_text(json.dumps([SHIFT]))
    archive = make_tar(data, root / "genies-datasets.tar")
    repo = scratch_copy(root / "repo")
    config = workflow_config(
        "../genies-data",  # missing, as ../shared/genies-data is on a new machine
        data_url=archive.as_uri(),
        published=str(published_folder(root / "published")),
        models={MODEL: {"source": "tiny"}},
        run_models=[MODEL],
        interventions={"zero_shot": {}, "random": {}, "mms": {"n_units": 2}},
        capability_interventions=["mms"],
        caps={"train_examples": 6, "test_examples": TEST_EXAMPLES},
    )
    write_config(repo, config)
    return repo


def run(repo: Path, argv: list[str], script: str | None = None) -> str:
    """Run a README command in `repo` (the README's commands run from the repository root)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENIES_")}
    proc = subprocess.run(
        argv, cwd=repo, env=env, input=script, capture_output=True, text=True, timeout=1200
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"README command failed ({proc.returncode}): {argv}\n{output}"
    return output


def as_run(command: str) -> str | None:
    """The command line this test runs for a README command, or None when it is set aside."""
    if command in SET_ASIDE:
        return None
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    return f"{command} --dry-run" if command in DRY_RUN else command


def test_the_lists_name_only_readme_commands():
    commands, _ = readme_commands()
    stale = sorted((set(SET_ASIDE) | set(DRY_RUN)) - set(commands))
    assert not stale, f"no longer in README.md: {stale}"
    unfilled = [c for c in commands if (line := as_run(c)) and re.search(r"<\w+>", line)]
    assert not unfilled, f"placeholders this test cannot fill in: {unfilled}"


def test_the_readme_and_the_download_advice_agree():
    commands, _ = readme_commands()
    assert f".venv/bin/{DOWNLOAD_COMMAND}" in commands


def test_every_readme_command_and_query_runs(scratch):
    commands, scripts = readme_commands()
    # Without the data every target stops and says to fetch it first: the download comes first.
    ordered = sorted(commands, key=lambda c: "download_data" not in c)
    ran = []
    for command in ordered:
        line = as_run(command)
        if line is None:
            continue
        forward = scratch / f"results/forward/{MODEL}/{SHIFT['source']}.parquet"
        before = forward.stat().st_mtime_ns if forward.exists() else None
        start = time.monotonic()
        output = run(scratch, ["bash", "-c", line])
        print(f"{time.monotonic() - start:6.1f} s  {line}")  # pytest -s shows where time goes
        if "--forcerun forward" in line:  # the single-cell rerun recomputed its forward pass
            assert before is not None and forward.stat().st_mtime_ns > before, output
        ran.append(line)
    assert (scratch / "resources/genies-datasets.tar").is_file()
    results = json.loads((scratch / f"results/genies_table/{MODEL}.json").read_text())
    assert {row["intervention"] for row in results["table"]} == {"zero_shot", "random", "mms"}
    cell = scratch / f"results/cells/{MODEL}/mms/alpaca_mmlu__spanish_output.json"
    assert json.loads(cell.read_text())["complete"]
    # The queries: each runs, none prints an empty result, and together they show this run's
    # rows and the paper's (the README's names are this test's).
    assert scripts, "README.md has no Python block"
    outputs = [run(scratch, [".venv/bin/python", "-"], script=script) for script in scripts]
    for output in outputs:
        assert "Empty DataFrame" not in output and not re.search(r"\b0 rows", output), output
    assert "llama-30b@published" in "".join(outputs) and MODEL in "".join(outputs), outputs
    assert len(ran) >= 6, ran
