from genies.results import published
from genies.pipeline.plan import REPORT_TEMPLATES

# The paper's published runs (config key `published`), converted once into results/published/.
PUBLISHED = published.configured_folder(config.get("published"))
PUBLISHED_FILES = list(published.OUTPUTS.values()) if PUBLISHED else []


localrules:
    aggregate,
    cell,
    report_tables,
    viewer,
    genies_table,


rule aggregate:
    input:
        shifts=SHIFTS,
        data=plan.data_files(),
        forward=plan.forward_files(),
        predictions=plan.prediction_files(),
        published=PUBLISHED_FILES,
    output:
        DATABASE,
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    params:
        capability_interventions=config["capability_interventions"],
        seed=config["seed"],
    script:
        "../workflow_scripts/aggregate.py"


rule report_tables:
    input:
        database=DATABASE,
        models=lambda w: [
            MODEL_DIR.format(model=m) for m in plan.models_behind(w.model)
        ],
    output:
        **{
            name: report(path, category="GENIES table", subcategory="{model}")
            for name, path in REPORT_TEMPLATES.items()
        },
    log:
        "results/logs/report_tables/{model}.log",
    benchmark:
        "results/benchmarks/report_tables/{model}.tsv"
    params:
        # The results file records the resolved config: any change of it rewrites the file.
        config=config,
        models=lambda w: plan.models_behind(w.model),
    script:
        "../workflow_scripts/report_tables.py"


# The per-example viewer: index.html and one data script per shift, opened from disk. A folder
# in the report needs `snakemake --report report.zip` (an .html report cannot hold folders).
rule viewer:
    input:
        database=DATABASE,
        data=plan.data_files(),
    output:
        report(
            directory(VIEWER),
            htmlindex="index.html",
            caption="../report/viewer.rst",
            category="Per-example viewer",
            subcategory="{model}",
        ),
    log:
        "results/logs/viewer/{model}.log",
    benchmark:
        "results/benchmarks/viewer/{model}.tsv"
    script:
        "../workflow_scripts/viewer.py"


if PUBLISHED:

    localrules:
        import_published,

    # Matches the published pairs to the test splits of the raw data (all datasets, whatever
    # the config selects): seconds, on the submit host.
    rule import_published:
        input:
            published=PUBLISHED,
            data=lambda w: sorted(
                {plan.raw_input(d, "test") for d in plan.available_datasets}
            ),
        output:
            **published.OUTPUTS,
        log:
            "results/logs/import_published.log",
        benchmark:
            "results/benchmarks/import_published.tsv"
        params:
            data_dir=str(plan.data_location),
        script:
            "../workflow_scripts/import_published.py"


# The prediction files are listed here too so that a deleted one is rebuilt (Snakemake does
# not regenerate a missing intermediate file while the database built from it is current).
rule genies_table:
    input:
        DATABASE,
        plan.prediction_files(),
        expand(list(REPORT_TEMPLATES.values()), model=plan.models),
        expand(VIEWER, model=plan.models),


# One cell, rebuilt from only its own inputs: snakemake results/cells/<model>/<intervention>/<shift>.json
rule cell:
    input:
        shifts=SHIFTS,
        predictions=lambda w: plan.cell_files(w.model, w.intervention, w.shift),
    output:
        CELL,
    log:
        "results/logs/cell/{model}/{intervention}/{shift}.log",
    benchmark:
        "results/benchmarks/cell/{model}/{intervention}/{shift}.tsv"
    params:
        capability_interventions=config["capability_interventions"],
        seed=config["seed"],
    script:
        "../workflow_scripts/cell.py"
