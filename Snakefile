# GENIES: reward-model generalisation benchmark (Clymer et al.) as a Snakemake workflow.
# Stages: materialise data -> prepare models -> forward passes -> predictions -> results.duckdb
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/forward.smk"
include: "rules/fit.smk"
include: "rules/tune.smk"
include: "rules/predict.smk"
include: "rules/external.smk"
include: "rules/aggregate.smk"


rule all:
    input:
        rules.genies_table.input,
