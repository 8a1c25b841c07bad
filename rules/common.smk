import re
import sys

from snakemake.utils import validate

# The genies package lives next to this Snakefile: importable here without an install, and in
# jobs through the workflow_scripts/genies link (Snakemake puts a script's folder on sys.path),
# so conda environments and cluster jobs need no install of it either.
sys.path.insert(0, workflow.basedir)

from genies.config import check_semantics
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
    stimulus="plain",
    intervention="zero_shot",


ENV = "../envs/genies.yaml"
