localrules:
    aggregate,
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
    script:
        "../workflow_scripts/aggregate.py"


# The prediction files are listed here too so that a deleted one is rebuilt (Snakemake does
# not regenerate a missing intermediate file while the database built from it is current).
rule genies_table:
    input:
        "results/results.duckdb",
        plan.prediction_files(),
