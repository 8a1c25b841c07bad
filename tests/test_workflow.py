"""End to end: the real Snakemake DAG on a tiny random model and tiny fixture datasets."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from genies.forward.zero_shot import read_scores
from genies.io import read_provenance

from .fixtures import GENIES_SHIFTS, make_examples, make_genies_folder, workflow_config
from .test_database import POLLER, crashed_writer, start, tables
from .workflow import (
    DOWNSTREAM,
    REPO,
    planned_jobs,
    planned_outputs,
    snakemake,
    snakemake_command,
    snakemake_with,
    write_config,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = make_genies_folder(root / "genies-data")
    write_config(root, workflow_config(data))
    snakemake(root, "genies_table")
    # The table of an uninterrupted run, before any test changes the data (test_kill_9_...).
    shutil.copy(root / TABLE, root / "uninterrupted.csv")
    return root


TABLE = "results/genies_table/tiny.csv"


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
    assert runs == [("forward", 4), ("materialise", 8), ("predict", 4)]
    (versions,) = query(workdir, "select packages from runs where job = 'forward' limit 1")[0]
    assert json.loads(versions)["torch"]
    warnings = query(workdir, "select count(*) from datasets")
    assert warnings == [(8,)]


def test_predictions_match_forward_scores(workdir):
    preds = pq.read_table(workdir / "results/predictions/tiny/zero_shot/none/tgt_b.parquet")
    fwd = read_scores(workdir / "results/forward/tiny/tgt_b.parquet", stimulus="plain").to_pylist()
    score = {(r["example_id"], r["response_index"]): r["logprob_sum"] for r in fwd}
    for row in preds.to_pylist():
        s_pref = score[(row["example_id"], row["preferred_response"])]
        s_disp = score[(row["example_id"], row["dispreferred_response"])]
        assert row["correct"] == (s_pref > s_disp)
        assert (row["prob_preferred"] > 0.5) == (s_pref > s_disp)
    prov = read_provenance(workdir / "results/forward/tiny/tgt_b.parquet")
    # zero-shot alone needs only the test split's plain log-probs, and no activations
    assert list(prov["passes"]) == ["test/plain"]
    assert prov["passes"]["test/plain"]["tokens_unique"] > 0
    assert prov["device"] == "cpu" and prov["seconds"] >= 0


def test_second_run_does_nothing(workdir):
    assert planned_jobs(workdir) == Counter()


def test_deleting_one_prediction_rebuilds_only_it(workdir):
    target = "results/predictions/tiny/zero_shot/none/tgt_c.parquet"
    os.remove(workdir / target)
    assert planned_jobs(workdir) == Counter(predict_zero_shot=1) + DOWNSTREAM
    assert target in planned_outputs(workdir)
    snakemake(workdir, "genies_table")
    assert planned_jobs(workdir) == Counter()


def test_editing_one_dataset_reruns_only_its_jobs(workdir):
    time.sleep(1.1)  # mtime resolution
    path = workdir / "genies-data/distributions/tgt_b/test.json"
    path.write_text(json.dumps(make_examples(5, 3, 99)))
    jobs = planned_jobs(workdir)
    assert jobs == Counter(materialise=1, forward=1, predict_zero_shot=1) + DOWNSTREAM
    outputs = planned_outputs(workdir)
    assert "results/data/tgt_b/test.parquet" in outputs
    assert "results/forward/tiny/tgt_b.parquet" in outputs
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
    log = (workdir / "results/logs/materialise/tgt_c/test.log").read_text()
    assert "test.json, record 2, field 'responses': required field is missing" in log
    assert not (workdir / "results/data/tgt_c/test.parquet").exists()
    # The previous database stays readable and whole.
    assert query(workdir, "select count(*) > 0 from predictions")[0][0]
    path.write_text(json.dumps(make_examples(6, 2, 1003)))
    snakemake(workdir, "genies_table")


def test_failed_job_shows_its_error_on_the_console(tmp_path):
    """The job's own message (file, record, field), not only `check log file(s)`: the
    workflow profile's show-failed-logs prints the failed job's log. One job, no model."""
    data = make_genies_folder(tmp_path / "genies-data")
    records = make_examples(3, 2, 5)
    records[1]["responses"] = {"a": 1.0, "b": 0.5}
    (data / "distributions/tgt_c/test.json").write_text(json.dumps(records))
    write_config(tmp_path, workflow_config(data))
    proc = snakemake(tmp_path, "results/data/tgt_c/test.parquet", check=False)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "distributions/tgt_c/test.json, record 1, field 'responses': scores must be 1.0 "
        "(preferred) or 0.0 (dispreferred), found 0.5"
    ) in console, console[-4000:]


def test_unknown_model_is_rejected_before_any_job(tmp_path):
    data = make_genies_folder(tmp_path / "genies-data")
    write_config(tmp_path, workflow_config(data, run_models=["missing"]))
    proc = snakemake(tmp_path, "--dry-run", "genies_table", check=False)
    assert proc.returncode != 0
    assert "run_models names ['missing']" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


CELL = "results/cells/tiny/zero_shot/src_a__tgt_c.json"


def test_single_cell_target(workdir):
    # All its inputs exist: building the cell runs only the cell job.
    assert planned_jobs(workdir, CELL) == Counter(cell=1)
    # Forcing its prediction jobs recomputes only what this cell reads: the zero-shot
    # predictions (and forward passes) of tgt_c, src_a and ref_d (the target reference).
    forced = planned_outputs(workdir, CELL, extra=("--forcerun", "forward", "predict_zero_shot"))
    predicted = sorted(p for p in forced if p.startswith("results/predictions/"))
    assert predicted == [
        f"results/predictions/tiny/zero_shot/none/{d}.parquet" for d in ("ref_d", "src_a", "tgt_c")
    ]
    assert not [p for p in forced if "tgt_b" in p]
    snakemake(workdir, CELL)
    cell = json.loads((workdir / CELL).read_text())
    assert cell["shift_id"] == "src_a__tgt_c" and cell["target_reference"] == "ref_d"
    assert cell["complete"] and cell["differential_elicitation"] == 0.0


def test_adding_a_model_or_shift_adds_only_new_jobs(workdir):
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    try:
        models = {**config["models"], "tiny2": {**config["models"]["tiny"], "seed": 1}}
        write_config(workdir, {**config, "models": models, "run_models": ["tiny", "tiny2"]})
        assert planned_jobs(workdir) == Counter(
            prepare_model=1,
            forward=4,
            predict_zero_shot=4,
            aggregate=1,
            publish_database=1,
            report_tables=2,
            viewer=2,
            genies_table=1,
        )
        assert not [p for p in planned_outputs(workdir) if "/tiny/" in p]
        shifts = workdir / "more_shifts.json"
        shifts.write_text(json.dumps([*GENIES_SHIFTS, {"source": "tgt_b", "target": "src_a"}]))
        write_config(workdir, {**config, "shifts": str(shifts)})
        # tgt_b -> src_a needs no dataset the run does not have: only the shift table and
        # what reads it.
        assert planned_jobs(workdir) == Counter(shift_registry=1) + DOWNSTREAM
    finally:
        write_config(workdir, config)
    assert planned_jobs(workdir) == Counter()


def test_editing_scripts_or_package_docstrings_reruns_nothing(workdir, tmp_path):
    # A copy of the workflow whose script and package docstrings differ from the repo's.
    copy = tmp_path / "workflow"
    copy.mkdir()
    for name in (
        "Snakefile",
        "rules",
        "workflow_scripts",
        "schemas",
        "genies",
        "profiles",
        "report",
    ):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(
                src, copy / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(src, copy / name)
    for path in (copy / "genies/forward/zero_shot.py", copy / "workflow_scripts/forward.py"):
        text = path.read_text()
        path.write_text(text.replace('"""', '"""Edited docstring. ', 1))
    proc = snakemake_with(copy / "Snakefile", workdir, "--dry-run", "genies_table")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_reading_the_snakefile_imports_no_torch_or_plotting():
    # Every Snakemake invocation (and every cluster job) reads the Snakefile; importing torch
    # or matplotlib there cost ~1.7 s each time (bench/bench_dag.py). The modules the rules
    # import are read from the rule files, so a new import is checked too.
    sources = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    imports = re.compile(r"^from (genies\S*) import", re.M)
    modules = sorted({m for path in sources for m in imports.findall(path.read_text())})
    assert "genies.pipeline.plan" in modules
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); "
        + "".join(f"import {m}; " for m in modules)
        + "print(sorted({'torch', 'matplotlib', 'pandas', 'transformers'} & set(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", (modules, proc.stdout)


BUILT = ("results/results.duckdb", "results/database/results.duckdb", TABLE)
VIEWER = "results/viewer/tiny/index.html"


def states(workdir, paths=(*BUILT, VIEWER)) -> dict:
    """(inode, mtime) of each file; None where it does not exist."""
    found = {}
    for p in paths:
        stat = os.stat(workdir / p) if (workdir / p).exists() else None
        found[p] = stat and (stat.st_ino, stat.st_mtime_ns)
    return found


def test_missing_data_stops_every_target_before_any_job(workdir):
    """Without the data nothing runs, so nothing built is deleted (the viewer used to run,
    fail and lose its old output)."""
    before = states(workdir)
    data = workdir / "genies-data"
    data.rename(workdir / "elsewhere")
    try:
        for target in ("genies_table", "results/viewer/tiny", TABLE, BUILT[0], CELL):
            proc = snakemake(workdir, target, check=False)
            console = proc.stdout + proc.stderr
            assert proc.returncode != 0, target
            assert f"data_dir '{data}' does not exist. Set data_dir" in console, target
            assert "InputFunctionException" in console and "Select jobs to execute" not in console
    finally:
        (workdir / "elsewhere").rename(data)
    assert states(workdir) == before
    assert planned_jobs(workdir) == Counter()


def test_a_bad_prediction_file_stops_the_aggregation(workdir):
    path = "results/predictions/tiny/zero_shot/none/tgt_b.parquet"
    complete = pq.read_table(workdir / path)
    before = states(workdir)
    pq.write_table(complete.slice(0, complete.num_rows // 2), workdir / path)
    for target in ("genies_table", "results/cells/tiny/zero_shot/src_a__tgt_b.json"):
        proc = snakemake(workdir, target, check=False)
        console = proc.stdout + proc.stderr
        assert proc.returncode != 0
        half = complete.num_rows - complete.num_rows // 2
        assert f"{path} (made by rule predict_zero_shot):" in console, console[-3000:]
        assert f"{half} of {complete.num_rows} pairs missing (tgt_b/test/" in console
        assert f"rm '{path}'" in console
    # The database users open, the tables and the viewer are the last complete ones (Snakemake
    # deleted only the failed job's output, the workflow's own database).
    assert states(workdir) == {**before, BUILT[1]: None}
    os.remove(workdir / path)  # as the message says
    snakemake(workdir, "genies_table")
    assert pq.read_table(workdir / path).num_rows == complete.num_rows
    assert planned_jobs(workdir) == Counter()


def test_readers_never_miss_the_database_and_lose_nothing(workdir, tmp_path):
    """A reader polls results/results.duckdb through a whole aggregation; a writer that was
    killed left its log beside it (which used to fail every later job)."""
    public = workdir / BUILT[0]
    crashed_writer(public)
    stop = tmp_path / "stop"
    poller = start(POLLER.replace("max(version)", "count(*)"), public, stop)
    try:
        snakemake(workdir, "genies_table", "--forcerun", "aggregate")
    finally:
        stop.touch()
        out, _ = poller.communicate(timeout=60)
    report = json.loads(out)
    assert report["failures"] == 0, report["errors"]
    assert sum(report["seen"].values()) > 10
    (kept,) = (workdir / "results/database/previous").glob("*.duckdb")
    assert "mine" in tables(kept) and "mine" not in tables(public)
    assert not (workdir / "results/results.duckdb.wal").exists()
    log = (workdir / "results/logs/publish_database.log").read_text()
    assert f"as results/database/previous/{kept.name}: a process that opened it" in log
    assert planned_jobs(workdir) == Counter()


def test_kill_9_then_what_the_readme_says(workdir, tmp_path):
    """SIGKILL a run of the README's command, type what README "If a run is interrupted"
    says, and get the table of an uninterrupted run."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### If a run is interrupted", 1)[1].split("\n### ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split()[1:] for line in block.splitlines() if line.strip()]
    assert commands == [["--unlock"], ["--cores", "all", "genies_table"]]
    make_genies_folder(tmp_path / "genies-data")
    write_config(tmp_path, workflow_config(tmp_path / "genies-data"))
    run = subprocess.Popen(
        snakemake_command(tmp_path, "--cores", "all", targets=["genies_table"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 600
        while not list((tmp_path / "results/forward").glob("*/*.parquet")):
            assert run.poll() is None and time.time() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # Snakemake and the jobs it runs
        run.wait()
    assert not (tmp_path / TABLE).exists()
    proc = subprocess.run(commands_for(tmp_path, commands[1]), capture_output=True, text=True)
    assert proc.returncode != 0 and "Directory cannot be locked" in proc.stdout + proc.stderr
    for command in commands:
        proc = subprocess.run(commands_for(tmp_path, command), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / TABLE).read_text() == (workdir / "uninterrupted.csv").read_text()


def commands_for(workdir, args) -> list:
    """A README command line (`.venv/bin/snakemake` + args) run in `workdir`: its target, if
    it ends with one, goes first (snakemake_command)."""
    target = args[-1:] if len(args) > 1 and not args[-1].startswith("-") else []
    return snakemake_command(workdir, *args[: len(args) - len(target)], targets=target)
