import atexit
import gc
import re
import sys

from snakemake.utils import validate

# Snakemake keeps a graph of Python objects per job for the whole run (5,685 jobs for every
# shift x 10 interventions x 3 models). With the default thresholds the cyclic garbage
# collector rescans that growing graph again and again while the DAG is built, and once more
# at exit: about half of a no-op run (bench/bench_dag.py). Young objects are still collected,
# but only every 100,000 allocations, and older generations rarely; at exit nothing is swept.
gc.set_threshold(100_000, 100, 100)
atexit.register(gc.freeze)

# The genies package lives next to this Snakefile: importable here without an install, and in
# jobs through the workflow_scripts/genies link (Snakemake puts a script's folder on sys.path),
# so conda environments and cluster jobs need no install of it either.
sys.path.insert(0, workflow.basedir)

from genies.config import check_semantics
from genies import interventions as registry
from genies.plan import Plan

validate(config, schema="../schemas/config.schema.yaml")
check_semantics(config)
plan = Plan(config)


def _alternatives(names):
    return "|".join(re.escape(n) for n in names)


wildcard_constraints:
    dataset=_alternatives(plan.available_datasets),
    eval=_alternatives(plan.available_datasets),
    train=f"none|{_alternatives(plan.available_datasets)}",
    model=_alternatives(config["models"]),
    split="train|test",
    stimulus="plain|lat2|yesno",
    intervention=_alternatives(registry.REGISTRY),
    shift=_alternatives(s.shift_id for s in plan.shifts),


ENV = "../envs/genies.yaml"
PROBES = plan.of_family("probe")
TUNED = plan.of_family("tuned")


def probe_stimulus(wildcards):
    return registry.get(wildcards.intervention).stimulus


def tune_params(wildcards):
    """A reward model's parameters: the caps and scoring device unless the method sets them."""
    defaults = {
        "max_train_examples": plan.cap("train"),
        "device": config["scoring"]["device"],
        "dtype": config["scoring"]["dtype"],
    }
    return {**defaults, **config["interventions"][wildcards.intervention]}


import math


# Cluster resources (used by the SLURM profile; a local run ignores them unless --resources
# limits one). Each figure is multiplied by the attempt (1, 2, 3 with the profile's retries),
# so a job killed for memory or wall time comes back with more. mem_mb is in MB, runtime in
# minutes; per_billion scales with the model's registry `params_b` (1 when not given).
def model_params_b(model):
    return float(config["models"][model].get("params_b", 1))


def by_attempt(base):
    return lambda wildcards, attempt: base * attempt


def by_model_size(base, per_billion):
    def value(wildcards, attempt):
        size = model_params_b(wildcards.model)
        return math.ceil((base + per_billion * size) * attempt)

    return value


def job_threads(wildcards, threads):
    """cpus_per_task / cpus_per_gpu of a job: the threads it runs with."""
    return threads


def prepare_model_mem_mb(wildcards, attempt):
    # A linked local model is only validated; the other sources load the whole model once.
    loads_weights = not config["models"][wildcards.model].get("link", False)
    return by_model_size(2000, 3000 if loads_weights else 0)(wildcards, attempt)
