import os
import re
import sys

from snakemake.utils import validate

# The genies package lives next to this Snakefile; make it importable here and in every job
# (conda environments and cluster jobs included) without requiring an install.
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p
)

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
    train="none|" + _alternatives(plan.available_datasets),
    model=_alternatives(config["models"]),
    split="train|test",
    stimulus="plain",
    intervention="zero_shot",


ENV = "../envs/genies.yaml"
