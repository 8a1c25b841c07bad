from genies.plan import REPORT_TEMPLATES


localrules:
    aggregate,
    cell,
    report_tables,
    genies_table,


rule aggregate:
    input:
        shifts="results/shifts.parquet",
        data=plan.data_files(),
        forward=plan.forward_files(),
        predictions=plan.prediction_files(),
    output:
        "results/results.duckdb",
    log:
        "results/logs/aggregate.log",
    conda:
        ENV
    params:
        capability_interventions=config["capability_interventions"],
        seed=config["seed"],
    script:
        "../workflow_scripts/aggregate.py"


rule report_tables:
    input:
        "results/results.duckdb",
    output:
        **{
            name: report(path, category="GENIES table", subcategory="{model}")
            for name, path in REPORT_TEMPLATES.items()
        },
    log:
        "results/logs/report_tables/{model}.log",
    conda:
        ENV
    script:
        "../workflow_scripts/report_tables.py"


# The prediction files are listed here too so that a deleted one is rebuilt (Snakemake does
# not regenerate a missing intermediate file while the database built from it is current).
rule genies_table:
    input:
        "results/results.duckdb",
        plan.prediction_files(),
        expand(list(REPORT_TEMPLATES.values()), model=plan.models),


# One cell, rebuilt from only its own inputs: snakemake results/cells/<model>/<intervention>/<shift>.json
rule cell:
    input:
        shifts="results/shifts.parquet",
        predictions=lambda w: plan.cell_files(w.model, w.intervention, w.shift),
    output:
        "results/cells/{model}/{intervention}/{shift}.json",
    log:
        "results/logs/cell/{model}/{intervention}/{shift}.log",
    conda:
        ENV
    params:
        capability_interventions=config["capability_interventions"],
        seed=config["seed"],
    script:
        "../workflow_scripts/cell.py"
