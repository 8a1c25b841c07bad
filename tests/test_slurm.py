"""SLURM: the resources each job asks for, and the workflow on a real (local) SLURM cluster.

The unmarked tests read the resources of every planned job from dry runs, with and without
`--profile slurm` (no cluster needed). The tests marked `slurm` are opt-in (GENIES_SLURM_TEST=1,
root, apt; once asked for, a machine that cannot run them fails them): they install Debian's
SLURM, start a single-node cluster on 127.0.0.1 with two fake GPUs (tests/slurm_cluster.py)
and run the tiny-model workflow with `snakemake --profile slurm genies_table` from the
repository root, next to a local run of the same config. One forward job
is cancelled with `scancel` while it runs; the profile's retries must resubmit it with more
memory and time, and the database must still equal the local one. One LoRA training is cancelled
between two of its checkpoints (as a preemption would stop it); its retry must resume from the
last checkpoint, not start again, and still train the same reward model as the local run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

from genies.methods.tuned.checkpoints import latest_checkpoint
from genies.pipeline.cluster import activation_file_bytes
from genies.pipeline.plan import DATA, Plan
from genies.scratch import scratch_in_memory

from . import slurm_cluster
from .fixtures import (
    ALL_INTERVENTIONS,
    TINY_MODEL,
    TRAINED_INTERVENTIONS,
    fake_llama_dir,
    make_genies_folder,
    preference_pairs,
    workflow_config,
    write_rows,
)
from .workflow import REPO, snakemake_command, write_config

# The rules whose jobs must run on GPU nodes. Add training and GPU evaluation rules here (and
# to the GPU list in profiles/slurm/config.yaml) when they are written.
GPU_CLASS = {"forward", "score_few_shot", "tune", "score_reward_model"}
# What the profile reads from the environment, as a site would set it; the test cluster has a
# `cpu` (default) and a `gpu` partition and GPUs of type `fake`.
SITE_ENV = {
    "GENIES_SLURM_PARTITION": "cpu",
    "GENIES_SLURM_GPU_PARTITION": "gpu",
    "GENIES_SLURM_GPU_MODEL": "fake",
}
# The test cluster has no accounting database, so job states come from squeue (docs/slurm.md);
# the first status check after a submission comes after 2 s instead of the plugin's 40 s; the
# sbatch command lines are only logged with --verbose.
CLUSTER_ARGS = (
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--verbose",
)
# Provenance that legitimately differs between two runs of the same job.
PROVENANCE_COLUMNS = {"seconds", "started_at", "host"}
# The cluster run's LoRA: on the tiny model, long enough (a few seconds per 20 steps on a
# loaded 2-core machine) to be caught running between two of its checkpoints.
SLOW_LORA = {**TRAINED_INTERVENTIONS["lora"], "steps": 300, "checkpoint_every": 20}


def site_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENIES_SLURM_")}
    return {**env, **SITE_ENV, **extra}


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return snakemake_command(workdir, *args, targets=["genies_table"])


def local_rules() -> set[str]:
    names = set()
    for path in (REPO / "rules").glob("*.smk"):
        for block in re.findall(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", path.read_text(), re.M):
            names.update(re.findall(r"\w+", block))
    return names


def _key_values(block: str, field: str) -> dict:
    line = re.search(rf"^\s+{field}: (.*)$", block, re.M)
    return dict(item.split("=", 1) for item in line.group(1).split(", ")) if line else {}


def planned_jobs(
    workdir: Path, env: dict, profile: bool = True, attempt: int = 1
) -> list[SimpleNamespace]:
    """Rule, wildcards and resources of every job a dry run (with `--profile slurm`) plans,
    as the `attempt`-th try of each job would ask for them."""
    args = [*(["--profile", "slurm"] if profile else []), "--attempt", str(attempt)]
    cmd = snakemake_cmd(workdir, *args, "--dry-run")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule:
            jobs.append(
                SimpleNamespace(
                    rule=rule.group(1),
                    wildcards=_key_values(block, "wildcards"),
                    resources=_key_values(block, "resources"),
                )
            )
    return jobs


@pytest.fixture(scope="module")
def dry_workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-dry")
    data = make_genies_folder(root / "genies-data")
    models = {"small": {**TINY_MODEL, "params_b": 1}, "large": {**TINY_MODEL, "params_b": 10}}
    # a reward model of one's own (never loaded by a dry run): its scoring jobs are GPU jobs
    models["rm"] = {"source": "local", "path": str(fake_llama_dir(root / "rm", "7b"))}
    own = {"my_rm": {"kind": "reward_model", "model": "rm", "base": "small"}}
    config = workflow_config(
        data,
        models=models,
        run_models=["small", "large"],
        interventions={**ALL_INTERVENTIONS, **own},
    )
    write_config(root, config)
    return root


def test_rules_declare_gpu_cpus_memory_and_time(dry_workdir):
    jobs = planned_jobs(dry_workdir, site_env(), profile=False)
    local = local_rules()
    assert {"aggregate", "genies_table"} <= local
    assert GPU_CLASS <= {job.rule for job in jobs}
    for job in jobs:
        res = job.resources
        if job.rule in local:  # never submitted
            assert "gpu" not in res, (job.rule, res)
            continue
        assert int(res["mem_mb"]) > 0 and int(res["runtime"]) > 0, (job.rule, res)
        if job.rule in GPU_CLASS:
            assert res["gpu"] == "1" and int(res["cpus_per_gpu"]) >= 1, (job.rule, res)
        else:
            assert "gpu" not in res and int(res["cpus_per_task"]) >= 1, (job.rule, res)


def test_profile_resolves_from_repo_root_and_routes_jobs_by_site_environment(dry_workdir):
    jobs = planned_jobs(dry_workdir, site_env(GENIES_SLURM_ACCOUNT="lab42"))
    for job in jobs:
        if job.rule in local_rules():
            continue
        res = job.resources
        assert res["slurm_account"] == "lab42", (job.rule, res)
        if job.rule in GPU_CLASS:  # the profile's GPU list names exactly these rules
            assert (res["gpu"], res["slurm_partition"], res["gpu_model"]) == ("1", "gpu", "fake")
        else:
            assert "gpu" not in res and "gpu_model" not in res, (job.rule, res)
            assert res["slurm_partition"] == "cpu", (job.rule, res)


def test_own_distributions_are_pinned_on_the_submit_host_and_materialised_on_cpu_nodes(tmp_path):
    data = make_genies_folder(tmp_path / "genies-data")
    write_rows(tmp_path / "mine.jsonl", preference_pairs(4, 0))
    (tmp_path / "shifts.json").write_text(json.dumps([{"source": "mine", "target": "tgt_b"}]))
    mine = {"files": {"train": "mine.jsonl", "test": "mine.jsonl"}, "layout": "pairs"}
    mine["columns"] = {"prompt": "question"}
    config = workflow_config(data, shifts="shifts.json", distributions={"mine": mine})
    write_config(tmp_path, config)
    jobs = planned_jobs(tmp_path, site_env())
    assert [j.rule for j in jobs].count("materialise_distribution") == 2
    assert "pin_distribution" in local_rules() & {j.rule for j in jobs}  # it may download
    for job in jobs:
        if job.rule == "materialise_distribution":
            res = job.resources
            assert res["slurm_partition"] == "cpu" and "gpu" not in res, res
            assert int(res["mem_mb"]) > 0 and int(res["cpus_per_task"]) >= 1, res


def test_profile_without_site_environment_leaves_the_choice_to_slurm(dry_workdir):
    env = {k: v for k, v in site_env().items() if k not in SITE_ENV}
    for job in planned_jobs(dry_workdir, env):
        assert not {"slurm_account", "slurm_partition", "gpu_model"} & set(job.resources), job
        assert (job.resources.get("gpu") == "1") == (job.rule in GPU_CLASS), job


def test_model_jobs_scale_with_the_registry_size(dry_workdir):
    sizes, local = {}, local_rules()
    for job in planned_jobs(dry_workdir, site_env()):
        if "model" in job.wildcards and job.rule not in local:
            res = job.resources
            sizes.setdefault((job.rule, job.wildcards["model"]), set()).add(
                (int(res["mem_mb"]), int(res["runtime"]))
            )
    assert {"forward", "prepare_model"} <= {rule for rule, _ in sizes}
    for rule in ("forward", "prepare_model"):
        (small,), (large,) = sizes[(rule, "small")], sizes[(rule, "large")]
        assert large[0] > small[0] and large[1] > small[1], (rule, small, large)


def test_slurm_runs_print_the_log_of_a_failed_job(dry_workdir):
    """show-failed-logs is set in the workflow profile (profiles/default), which Snakemake
    loads under --profile slurm too; the SLURM profile must not turn it off."""
    cmd = snakemake_command(
        dry_workdir, "--profile", "slurm", "--dry-run", targets=["results/shifts.parquet"]
    )
    proc = subprocess.run(cmd, cwd=REPO, env=site_env(), capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "Using profiles slurm and workflow specific profile profiles/default" in text, text
    profiles = REPO / "profiles"
    assert "\nshow-failed-logs: true\n" in (profiles / "default/config.yaml").read_text()
    assert "show-failed-logs:" not in (profiles / "slurm/config.yaml").read_text()


# --------------------------------------------------------------------------------------------
# The real cluster (opt-in)


def require_cluster() -> None:
    """Skip unless GENIES_SLURM_TEST=1 asks for the cluster; once asked, a machine that
    cannot run it is a failure, never a silent skip (CI sets the variable)."""
    if os.environ.get("GENIES_SLURM_TEST") != "1":
        pytest.skip("set GENIES_SLURM_TEST=1 to run the workflow on a local SLURM cluster")
    reason = slurm_cluster.unavailable_reason()
    if reason:
        pytest.fail(
            f"GENIES_SLURM_TEST=1 asks for the local SLURM cluster, but it cannot run here: "
            f"{reason}. Run the tests as root on a Debian-like machine without a SLURM "
            "configuration of its own (e.g. a container), or unset GENIES_SLURM_TEST.",
            pytrace=False,
        )


def test_a_link_left_by_a_killed_cluster_is_removed_and_others_are_kept(tmp_path, monkeypatch):
    conf = tmp_path / "etc/slurm/slurm.conf"
    conf.parent.mkdir(parents=True)
    monkeypatch.setattr(slurm_cluster, "DEFAULT_CONF", conf)
    conf.symlink_to(tmp_path / "genies-slurm-gone/slurm.conf")
    slurm_cluster.remove_stale_link()
    assert not conf.is_symlink()
    live = tmp_path / "genies-slurm-live"
    live.mkdir()
    for target in (live / "slurm.conf", tmp_path / "site/slurm.conf"):
        conf.symlink_to(target)
        slurm_cluster.remove_stale_link()
        assert conf.is_symlink(), target
        conf.unlink()


@pytest.mark.parametrize(
    "variable,reason,outcome",
    [
        (None, None, pytest.skip.Exception),
        ("0", "needs root", pytest.skip.Exception),
        (
            "1",
            "needs root (installs Debian packages and runs slurmd as root)",
            pytest.fail.Exception,
        ),
        ("1", "/etc/slurm/slurm.conf exists", pytest.fail.Exception),
    ],
)
def test_asking_for_the_cluster_where_it_cannot_run_fails(monkeypatch, variable, reason, outcome):
    if variable is None:
        monkeypatch.delenv("GENIES_SLURM_TEST", raising=False)
    else:
        monkeypatch.setenv("GENIES_SLURM_TEST", variable)
    monkeypatch.setattr(slurm_cluster, "unavailable_reason", lambda: reason)
    with pytest.raises(outcome) as err:
        require_cluster()
    if outcome is pytest.fail.Exception:
        assert reason in str(err.value) and "unset GENIES_SLURM_TEST" in str(err.value)


def _start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 900) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, f"{proc.args[-12:]} failed ({proc.returncode}):\n{text[-6000:]}"
    return text


def _rule_of(comment: str) -> str:
    return re.match(r"rule_(.+?)(_wildcards_|$)", comment).group(1)


def _work_started(workdir: Path, job: dict) -> bool:
    """The job step has launched the rule's work (the plugin logs the srun call first)."""
    logs = workdir / ".snakemake" / "slurm_logs" / f"rule_{_rule_of(job['Comment'])}"
    return any(
        "The call for this job is: srun" in p.read_text()
        for p in logs.glob(f"*/{job['JobId']}.log")
    )


def _between_checkpoints(workdir: Path, job: dict) -> bool:
    """A LoRA training has written a checkpoint (in `<output>.partial/`) and is not done."""
    for partial in (workdir / "results/tune/tiny/lora").glob("*.partial"):
        if job["Comment"].endswith("_" + partial.name.removesuffix(".partial")):
            checkpoint = latest_checkpoint(partial)
            step = int(checkpoint.name.removeprefix("step-")) if checkpoint else 0
            return 0 < step < SLOW_LORA["steps"]
    return False


def _cancel_running_jobs(cluster, workdir: Path, proc: subprocess.Popen, ready: dict) -> dict:
    """scancel the first RUNNING job of each rule in `ready` once `ready[rule](workdir, job)`
    holds; rule -> (job id, comment), (None, None) for a rule whose job was never caught."""
    cancelled = {}
    while proc.poll() is None and len(cancelled) < len(ready):
        for job in cluster.jobs().values():
            rule = _rule_of(job["Comment"])
            if rule not in ready or rule in cancelled or job["JobState"] != "RUNNING":
                continue
            if ready[rule](workdir, job):
                if cluster.run("scancel", job["JobId"], check=False).returncode == 0:
                    cancelled[rule] = (job["JobId"], job["Comment"])
        time.sleep(0.2)
    return {rule: cancelled.get(rule, (None, None)) for rule in ready}


def sbatch_calls(log: str) -> list[SimpleNamespace]:
    """The sbatch command lines the plugin logged (with --verbose), with rule and attempt."""
    calls = []
    for line in re.findall(r"^sbatch call: (.*)$", log, re.M):
        rule = re.search(r"--target-jobs '(\w+):", line).group(1)
        attempt = int(re.search(r"--attempt (\d+)", line).group(1))
        comment = re.search(r"--comment (\S+)", line).group(1)
        calls.append(SimpleNamespace(rule=rule, attempt=attempt, comment=comment, line=line))
    return calls


def _option(line: str, pattern: str) -> int:
    return int(re.search(pattern, line.split(" --wrap=", 1)[0]).group(1))


@pytest.fixture(scope="module")
def cluster_run():
    require_cluster()
    began = time.monotonic()
    slurm_cluster.install()
    installed = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="genies-slurm-test-"))
    cluster = slurm_cluster.SlurmCluster()
    procs = []  # the Snakemake processes started here, killed by PID if still running at the end
    try:
        cluster.start()
        started = time.monotonic()
        # One shift (4 datasets, 10 cluster jobs) keeps the run short on a 2-core machine.
        shift_file = scratch / "one_shift.json"
        shift_file.write_text(json.dumps([{"source": "src_a", "target": "tgt_b"}]))
        data = make_genies_folder(scratch / "genies-data")
        config = workflow_config(
            data, shifts=str(shift_file), interventions={"zero_shot": {}, "lora": SLOW_LORA}
        )
        local_dir, slurm_dir = scratch / "local", scratch / "slurm"
        for workdir in (local_dir, slurm_dir):
            workdir.mkdir()
            write_config(workdir, config)
        env = site_env(SLURM_CONF=str(cluster.conf))
        profile_args = ("--profile", "slurm", *CLUSTER_ARGS)
        local_log, first_log, second_log = (scratch / f"{n}.log" for n in ("local", "1", "2"))
        # The local run goes alongside the cluster run, whose controller mostly waits on
        # SLURM's scheduling and the plugin's status checks.
        local = _start(snakemake_cmd(local_dir, "--cores", "2"), local_log, env)
        first = _start(snakemake_cmd(slurm_dir, *profile_args), first_log, env)
        procs += [local, first]
        cancelled = _cancel_running_jobs(
            cluster,
            slurm_dir,
            first,
            {"forward": _work_started, "tune": _between_checkpoints},
        )
        first_text = _finish(first, first_log)
        first_done = time.monotonic()
        local_text = _finish(local, local_log)
        jobs_after_first = cluster.jobs()
        procs.append(_start(snakemake_cmd(slurm_dir, *profile_args), second_log, env))
        second_text = _finish(procs[-1], second_log)
        run = SimpleNamespace(
            cluster=cluster,
            local_dir=local_dir,
            slurm_dir=slurm_dir,
            local_log=local_text,
            first_log=first_text,
            second_log=second_text,
            jobs_after_first=jobs_after_first,
            jobs_after_second=cluster.jobs(),
            cancelled=cancelled,
        )
        print_report(
            run,
            install=installed - began,
            start=started - installed,
            first=first_done - started,
            total=time.monotonic() - began,
        )
        yield run
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def print_report(run, **seconds) -> None:
    print("\nsbatch command lines as the plugin built them (first job of each rule):")
    seen = set()
    for call in sbatch_calls(run.first_log):
        if call.rule not in seen or call.attempt > 1:
            seen.add(call.rule)
            print(f"  [{call.rule}, attempt {call.attempt}] {call.line.split(' --wrap=')[0]}")
    for job_id, comment in run.cancelled.values():
        print(f"scancel {job_id} ({comment})")
    for info in (run.slurm_dir / "results/tune").glob("*/*/*/reward_model.json"):
        resumed = json.loads(info.read_text())["resumed_from"]
        print(f"{info.parent.relative_to(run.slurm_dir)}: resumed from steps {resumed}")
    print("wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


@pytest.mark.slurm
def test_gpu_jobs_request_gpus_and_others_do_not(cluster_run):
    calls = [c for c in sbatch_calls(cluster_run.first_log) if c.attempt == 1]
    submitted = {c.rule for c in calls}
    # The cluster run is zero-shot and LoRA (to stay short): its GPU-class jobs are the
    # forward passes, trainings and their predictions. The dry-run tests above check the
    # resources of every GPU-class rule.
    assert {"forward", "tune", "materialise"} <= submitted
    assert not submitted & local_rules()  # aggregation ran on the submit host
    for call in calls:
        options = call.line.split(" --wrap=", 1)[0]
        if call.rule in GPU_CLASS:
            assert "--gpus=fake:1" in options and "--cpus-per-gpu=1" in options, options
            assert " -p gpu " in options, options
        else:
            assert "--gpus" not in options and "--gres" not in options, options
            assert "--cpus-per-task=1" in options and " -p cpu " in options, options
    # What slurmctld recorded for the jobs it ran.
    jobs = cluster_run.jobs_after_first.values()
    assert len(jobs) == len(sbatch_calls(cluster_run.first_log))
    for job in jobs:
        if _rule_of(job["Comment"]) in GPU_CLASS:
            assert job.get("TresPerJob") == "gres:gpu:fake:1", job
            assert job["Partition"] == "gpu", job
        else:
            assert "gpu" not in job.get("TresPerJob", ""), job
            assert job["Partition"] == "cpu", job


def _tables(db: Path) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = [r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()]
        tables = {}
        for name in names:
            columns = [
                r[0]
                for r in con.execute(
                    "select column_name from duckdb_columns() where table_name = ?", [name]
                ).fetchall()
                if r[0] not in PROVENANCE_COLUMNS
            ]
            # Table and column names come from the database itself, not from user input.
            select = ", ".join(f'"{c}"' for c in columns)
            rows = con.execute(f'select {select} from "{name}"').fetchall()
            tables[name] = (columns, sorted(rows, key=repr))
        return tables
    finally:
        con.close()


def _close(a, b) -> bool:
    """Equal, except floats within float32 rounding of sums taken in another order."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


# The cancelled training's retry (attempt 2) plans halved micro-batches and scoring batches,
# as after an out-of-memory failure: the same pairs and dropout masks, summed in another order,
# so its losses and probabilities match the local run's to float rounding, not bit for bit.
@pytest.mark.slurm
def test_cluster_result_equals_local_run(cluster_run):
    local = _tables(cluster_run.local_dir / "results/results.duckdb")
    cluster = _tables(cluster_run.slurm_dir / "results/results.duckdb")
    assert local.keys() == cluster.keys() and "predictions" in local
    assert len(local["predictions"][1]) > 0
    for name in local:
        assert cluster[name][0] == local[name][0], name
        assert len(cluster[name][1]) == len(local[name][1]), name
        for cluster_row, local_row in zip(cluster[name][1], local[name][1], strict=True):
            assert _close(cluster_row, local_row), (name, cluster_row, local_row)


@pytest.mark.slurm
def test_cancelled_job_is_resubmitted_with_more_resources(cluster_run):
    job_id, comment = cluster_run.cancelled["forward"]
    assert job_id, "no forward job was caught running"
    assert cluster_run.jobs_after_first[job_id]["JobState"] == "CANCELLED"
    assert f"SLURM-job '{job_id}' failed, SLURM status is: 'CANCELLED'" in cluster_run.first_log
    attempts = [c for c in sbatch_calls(cluster_run.first_log) if c.comment == comment]
    assert [c.attempt for c in attempts] == [1, 2]
    first, second = (c.line for c in attempts)
    assert _option(second, r"--mem (\d+)") == 2 * _option(first, r"--mem (\d+)")
    assert _option(second, r" -t (\d+)") == 2 * _option(first, r" -t (\d+)")


@pytest.mark.slurm
def test_second_invocation_submits_nothing(cluster_run):
    assert "Nothing to be done" in cluster_run.second_log
    assert not sbatch_calls(cluster_run.second_log)
    assert cluster_run.jobs_after_second.keys() == cluster_run.jobs_after_first.keys()


@pytest.mark.slurm
def test_cancelled_training_resumes_from_its_checkpoint(cluster_run):
    job_id, comment = cluster_run.cancelled["tune"]
    assert job_id, "no LoRA training was caught running between two checkpoints"
    assert cluster_run.jobs_after_first[job_id]["JobState"] == "CANCELLED"
    attempts = [c for c in sbatch_calls(cluster_run.first_log) if c.comment == comment]
    assert [c.attempt for c in attempts] == [1, 2]
    tune_dir = next(
        d
        for d in (cluster_run.slurm_dir / "results/tune/tiny/lora").iterdir()
        if comment.endswith("_" + d.name)
    )
    info = json.loads((tune_dir / "reward_model.json").read_text())
    # The retry went on from the cancelled attempt's last checkpoint (a periodic one, or the
    # one its SIGTERM handler wrote), instead of starting again from step 0.
    (resumed_step,) = info["resumed_from"]
    assert 0 < resumed_step < SLOW_LORA["steps"], info["resumed_from"]
    log = (cluster_run.slurm_dir / f"results/logs/tune/tiny/lora/{tune_dir.name}.log").read_text()
    assert f"(step {resumed_step} of {SLOW_LORA['steps']})" in log, log[-3000:]
    # after success the work dir keeps only the selected weights (a rerun reuses them)
    work = tune_dir.with_name(tune_dir.name + ".partial")
    assert json.loads((latest_checkpoint(work) / "state.json").read_text())["finished"]
    # Same best step and validation history as the uninterrupted local training (the weights
    # themselves are compared through the predictions in test_cluster_result_equals_local_run).
    local_dir = cluster_run.local_dir / "results/tune/tiny/lora" / tune_dir.name
    local = json.loads((local_dir / "reward_model.json").read_text())
    assert local["resumed_from"] == []
    assert info["best_step"] == local["best_step"]
    for key in ("validation", "train_loss"):
        assert _close(info[key], local[key]), (key, info[key], local[key])


def test_gpu_jobs_ask_for_what_the_model_needs(tmp_path):
    """GPU count and type per model, host memory for what a GPU job holds on the host (the
    runtime and one weight shard), not a multiple of the weight size."""
    data = make_genies_folder(tmp_path / "genies-data")
    models = {
        "llama-7b": {"source": "local", "link": True, "params_b": 7, "gpu_model": "a100",
                     "path": str(fake_llama_dir(tmp_path / "llama-7b", "7b", shards=2))},
        "llama-30b": {"source": "local", "link": True, "params_b": 30, "gpus": 2,
                      "path": str(fake_llama_dir(tmp_path / "llama-30b", "30b", shards=7))},
        # the same weights without `gpus`: the count follows from params_b and the GPU size,
        # the same whether the weights can be read here or not
        "sized-30b": {"source": "local", "link": True, "params_b": 32.5,
                      "path": str(tmp_path / "llama-30b")},
        "unseen-30b": {"source": "local", "link": True, "params_b": 32.5,
                       "path": str(tmp_path / "elsewhere/llama-30b")},
        "sized-65b": {"source": "local", "link": True, "params_b": 65.2,
                      "path": str(tmp_path / "elsewhere/llama-65b")},
    }  # fmt: skip
    config = workflow_config(data, models=models, run_models=list(models))
    config["scoring"].update(device="cuda", dtype="auto")  # bf16 on a GPU
    config["memory"] = {"gpu_memory_gb": 80}
    lora = {**TRAINED_INTERVENTIONS["lora"], "quantization": "nf4"}
    config["interventions"] = {"zero_shot": {}, "lora": lora}
    config["capability_interventions"] = ["lora"]
    write_config(tmp_path, config)
    seen = {}
    for job in planned_jobs(tmp_path, site_env()):
        if job.rule in GPU_CLASS:
            res = job.resources
            assert res["nodes"] == "1", (job.rule, res)  # a model's GPUs on one node
            seen[(job.rule, job.wildcards["model"])] = (
                res["gpu"],
                res["gpu_model"],
                int(res["mem_mb"]),
            )
    for rule in ("forward", "tune"):
        gpus, gpu_model, mem_7b = seen[(rule, "llama-7b")]
        assert (gpus, gpu_model) == ("1", "a100")  # the registry's type beats the site's
        gpus, gpu_model, mem_30b = seen[(rule, "llama-30b")]
        assert (gpus, gpu_model) == ("2", "fake")  # the site's type, the registry's count
        # 6 GB of runtime + 1.25 x the largest shard (7.0 and 9.7 GB): far below the 13.5
        # and 65 GB of bf16 weights, which live on the GPUs
        assert (mem_7b, mem_30b) == (14346, 17538), (rule, mem_7b, mem_30b)
    # 65 GB of bf16 weights fit one 80 GB GPU (85 GB as torch reports it, 80% for weights),
    # read here or not; 130 GB take two, and their QLoRA training's 4-bit base one
    for model, forward, tune in (("sized-30b", "1", "1"), ("unseen-30b", "1", "1"),
                                 ("sized-65b", "2", "1")):  # fmt: skip
        assert (seen[("forward", model)][0], seen[("tune", model)][0]) == (forward, tune)


def test_a_retry_asks_for_more_memory_and_time_and_tells_the_job(dry_workdir):
    """Every submitted job's mem_mb and runtime grow with the attempt (the profile's retries
    resubmit failed jobs); model jobs also get the attempt itself, for smaller batches."""
    by_attempt = {}
    for attempt in (1, 2, 3):
        for job in planned_jobs(dry_workdir, site_env(), attempt=attempt):
            if job.rule not in local_rules():
                key = (job.rule, tuple(sorted(job.wildcards.items())))
                by_attempt.setdefault(key, []).append(job.resources)
    assert by_attempt
    for (rule, _), (first, second, third) in by_attempt.items():
        for name in ("mem_mb", "runtime"):
            base = int(first[name])
            assert (int(second[name]), int(third[name])) == (2 * base, 3 * base), (rule, name)
        if rule in GPU_CLASS:
            assert [r["attempt"] for r in (first, second, third)] == ["1", "2", "3"], rule


def test_a_gpu_count_too_small_for_readable_weights_stops_the_dag(tmp_path):
    """Where Snakemake sees the weights, they check the count from the configuration: too
    small, and the run stops while the DAG is built, saying what to set."""
    data = make_genies_folder(tmp_path / "genies-data")
    weights = fake_llama_dir(tmp_path / "llama-30b", "30b")
    models = {"llama-30b": {"source": "local", "link": True, "params_b": 10, "path": str(weights)}}
    config = workflow_config(data, models=models, run_models=list(models))
    config["scoring"].update(device="cuda", dtype="auto")
    config["memory"] = {"gpu_memory_gb": 40}  # 10e9 parameters would fit one, 32.5e9 do not
    write_config(tmp_path, config)
    cmd = snakemake_cmd(tmp_path, "--profile", "slurm", "--dry-run")
    proc = subprocess.run(cmd, cwd=REPO, env=site_env(), capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "need 2 GPUs of 40 GB" in text and "set 'gpus: 2' in models.llama-30b" in text, text


@pytest.mark.e2e
def test_a_tmpfs_scratch_counts_in_the_forward_jobs_memory(tmp_path):
    """With scratch_dir on a tmpfs (as seen here), a forward job asks for its activation file
    on top of its host memory: <TBD> in a dry run until its data and model are built, then
    the exact size (genies.pipeline.cluster.activation_file_bytes)."""
    if not scratch_in_memory("/dev/shm/genies"):
        pytest.skip("/dev/shm is not a tmpfs here")
    data = make_genies_folder(tmp_path / "genies-data")
    interventions = {"zero_shot": {}, "mms": ALL_INTERVENTIONS["mms"]}
    config = workflow_config(data, interventions=interventions)
    write_config(tmp_path, config)
    env = {k: v for k, v in site_env().items() if k != "TMPDIR"}

    def forward_mem():
        jobs = planned_jobs(tmp_path, env, profile=False)
        return {j.wildcards["dataset"]: j.resources["mem_mb"] for j in jobs if j.rule == "forward"}

    on_disk = forward_mem()
    assert on_disk and all(v.isdigit() for v in on_disk.values()), on_disk
    write_config(tmp_path, {**config, "scratch_dir": "/dev/shm/genies"})
    assert set(forward_mem().values()) == {"<TBD>"}
    cmd = snakemake_cmd(tmp_path, "--cores", "2", "--until", "materialise", "prepare_model")
    subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    plan = Plan({**config, "scratch_dir": "/dev/shm/genies"})
    for dataset, mem_mb in forward_mem().items():
        work = plan.forward_work(dataset, "tiny")
        files = {split: tmp_path / DATA.format(dataset=dataset, split=split) for split in work}
        size = activation_file_bytes(work, files, {}, tmp_path / "resources/models/tiny")
        assert size > 0 and int(mem_mb) == int(on_disk[dataset]) + math.ceil(size / 2**20)
