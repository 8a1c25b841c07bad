import atexit
import gc
import math
import os
import re
import shutil
import sys
from pathlib import Path

from snakemake.logging import logger

# Snakemake keeps a graph of Python objects per job for the whole run (5,685 jobs for every
# shift x 10 interventions x 3 models). With the default thresholds the cyclic garbage
# collector rescans that growing graph again and again while the DAG is built, and once more
# at exit: about half of a no-op run (bench/bench_dag.py). Young objects are still collected,
# but only every 100,000 allocations, and older generations rarely; at exit nothing is swept.
gc.set_threshold(100_000, 100, 100)
atexit.register(gc.freeze)

# The genies package lives next to this Snakefile: importable here without an install, and in
# jobs through the workflow_scripts/genies link (Snakemake puts a script's folder on sys.path),
# so cluster jobs need no install of it either. Jobs run in the Python environment Snakemake
# runs in (.venv), not in conda environments of their own (README, "Dependencies").
sys.path.insert(0, workflow.basedir)

from genies.pipeline import cluster
from genies.pipeline import interventions as registry
from genies.pipeline.config import check_config
from genies.pipeline.gpus import check_model_gpus, config_gpus
from genies.pipeline.software import job_versions
from genies.scratch import scratch_in_memory
from genies.data.download import missing_data_message
from genies.pipeline.plan import (
    ADAPTER,
    BUILT_DATABASE,
    CELL,
    DATA,
    DATABASE,
    DISTRIBUTION_PIN,
    DOWNLOADED_DATA,
    FEW_SHOT_PROMPTS,
    FEW_SHOT_SCORES,
    FIT_INFO,
    FIT_TENSORS,
    FORWARD_ACTIVATIONS,
    FORWARD_SCORES,
    MODEL_DIR,
    PREDICTION,
    SHIFTS,
    SPLITS,
    TUNED_PREDICTIONS,
    VIEWER,
    Plan,
)

check_config(config)
plan = Plan(config)
# A model's GPU count comes from the config alone; weights this host can read check it now,
# before any job runs (and the prepare_model job checks it where they are always readable).
for name in {
    *config["run_models"],
    *(m for e in plan.entries.values() for m in e.reads),
}:
    check_model_gpus(config, name)
if plan.data_missing:  # said first: without the data, only download_data can run
    logger.warning(missing_data_message(config["data_dir"], config["data_url"]))


def remove_outputs_of_jobs_to_submit():
    """Delete, before a cluster run submits anything, the earlier outputs of every job it will
    submit (the jobs of the submit host keep theirs: the database, tables and viewer stay
    readable until they are rebuilt).

    In a SLURM bundle that fails, Snakemake records every job as completed (Snakemake 9,
    snakemake#3808), those that never ran included, and with the profile's `keep-incomplete`
    keeps their outputs: a job that never ran would keep its output of an earlier run, taken as
    up to date under the new parameters, and so would the jobs downstream of a failed one.
    Deleted at the start, only what this run completes is there afterwards, and the next run
    redoes the rest (docs/slurm.md, "Bundles"). Local runs (every job is local) delete
    nothing here. Runs on the submit host only (Snakemake starts cluster jobs with
    --no-hooks), never for a dry run or --touch, which must find the outputs.
    """
    if workflow.touch:
        return
    removed = 0
    for job in workflow.dag.needrun_jobs():
        if job.is_local:
            continue
        for output in map(Path, job.output):
            if output.is_dir() and not output.is_symlink():
                shutil.rmtree(output)
            elif output.exists() or output.is_symlink():
                output.unlink()
            else:
                continue
            removed += 1
    if removed:
        logger.info(
            f"Removed {removed} earlier outputs of the jobs this run will submit."
        )


onstart:
    remove_outputs_of_jobs_to_submit()


def _alternatives(names):
    # No names (the data is missing) matches nothing: Snakemake ignores an empty constraint.
    return "|".join(re.escape(n) for n in names) or "(?!)"


wildcard_constraints:
    dataset=_alternatives(plan.available_datasets),
    eval=_alternatives(plan.available_datasets),
    train=f"none|{_alternatives(plan.available_datasets)}",
    model=_alternatives(config["models"]),
    split="train|test",
    intervention=_alternatives({**registry.REGISTRY, **plan.entries}),
    # Without the data any shift matches, so that a cell target reaches its rule, whose input
    # function stops the run with the advice (plan.require_data), not "no rule to produce".
    shift=".+" if plan.data_missing else _alternatives(s.shift_id for s in plan.shifts),


GPU_MODEL_ENV = "GENIES_SLURM_GPU_MODEL"  # the GPU type of models that do not name one
PROBES = plan.of_family("probe")
TUNED = plan.of_family("tuned")
# The scoring settings a forward pass depends on (normalisation only matters to predictions).
SCORING = {
    k: config["scoring"][k]
    for k in ("batch_tokens", "device", "dtype", "activation_token")
}


def tune_params(wildcards):
    """A reward model's parameters: the train cap and the scoring device and dtype unless its
    config entry sets them."""
    given = config["interventions"][wildcards.intervention]
    workflow = {
        "max_train_examples": plan.cap("train"),
        "device": config["scoring"]["device"],
        "dtype": config["scoring"]["dtype"],
    }
    return {
        **plan.params(wildcards.intervention),
        **{k: v for k, v in workflow.items() if k not in given},
    }


# Cluster resources (used by the SLURM profile; a local run ignores them unless --resources
# limits one). mem_mb is in MB, runtime in minutes; each grows with the attempt (1, 2, 3 with
# the profile's retries), so a job killed for memory or wall time comes back with more.
def by_attempt(base):
    return lambda wildcards, attempt: base * attempt


def by_model_size(base, per_billion):
    """base + per_billion x the model's registry `params_b` (1 when not given), x attempt."""

    def value(wildcards, attempt):
        size = float(config["models"][wildcards.model].get("params_b", 1))
        return math.ceil(base + per_billion * size) * attempt

    return value


def job_threads(wildcards, threads):
    """cpus_per_task / cpus_per_gpu of a job: the threads it runs with."""
    return threads


MODEL_JOB_MINUTES = {
    "forward": (30, 10),
    "score_few_shot": (20, 12),
    "tune": (30, 15),
    "score_reward_model": (20, 10),
}


def gpu_job_resources(job):
    """GPUs (count and type per model), host memory and run time of a model job.

    `attempt` reaches the job too: after a GPU out-of-memory failure the retry plans smaller
    batches (genies.models.memory)."""
    on_gpu = config["scoring"]["device"] != "cpu"

    def spec(wildcards):
        return config["models"][wildcards.model]

    def quantization(wildcards):  # a QLoRA training holds its base in 4 bits
        if job != "tune":
            return None
        return plan.params(wildcards.intervention).get("quantization")

    def mem_mb(wildcards, attempt):
        return cluster.host_mem_mb(
            spec(wildcards), on_gpu, attempt, config["scoring"]["dtype"]
        )

    def mem_mb_with_scratch(wildcards, input, attempt):
        # known once the data and the model are built: <TBD> in a dry run before that
        work = plan.forward_work(wildcards.dataset, wildcards.model)
        scratch = cluster.activation_file_bytes(
            work,
            dict(zip(work, input.data)),
            {split: plan.cap(split) for split in work},
            input.model,
        )
        return mem_mb(wildcards, attempt) + math.ceil(scratch / cluster.MB)

    # a tmpfs scratch holds the activation file in the job's memory (genies.scratch)
    in_memory = job == "forward" and scratch_in_memory(config.get("scratch_dir"))
    resources = {
        "gpu": lambda w: config_gpus(config, w.model, quantization=quantization(w)),
        "nodes": 1,  # a model's GPUs are on one node: accelerate spreads it over local devices
        "cpus_per_gpu": job_threads,
        "mem_mb": mem_mb_with_scratch if in_memory else mem_mb,
        "runtime": by_model_size(*MODEL_JOB_MINUTES[job]),
        "attempt": lambda w, attempt: attempt,
        # One slot per job of a SLURM bundle, one slot per bundle layer (profiles/slurm):
        # bundled jobs run one after another, their time limits add up.
        "bundle_slot": 1,
    }
    if os.environ.get(GPU_MODEL_ENV) or any(
        m.get("gpu_model") for m in config["models"].values()
    ):
        # an empty type (a model without one) makes the SLURM plugin ask for any GPU
        resources["gpu_model"] = lambda w: spec(w).get("gpu_model") or os.environ.get(
            GPU_MODEL_ENV, ""
        )
    return resources


# Rule-level retries of the GPU rules: in the Snakemake that runs a SLURM allocation, a
# failed job is retried there with the next attempt; elsewhere `--retries` decides.
GPU_JOB_RETRIES = cluster.allocation_retries(os.environ)


def prepare_model_mem_mb(wildcards, attempt):
    # A linked local model is only validated; the other sources load the whole model once.
    spec = config["models"][wildcards.model]
    if spec.get("link", False):
        return by_attempt(2000)(wildcards, attempt)
    return cluster.host_mem_mb(spec, on_gpu=False, attempt=attempt, dtype="float32")
