from genies.results import published
from genies.pipeline.plan import REPORT_TEMPLATES

# The paper's published runs (config key `published`), converted once into results/published/.
PUBLISHED = published.configured_folder(config.get("published"))
PUBLISHED_FILES = list(published.OUTPUTS.values()) if PUBLISHED else []


localrules:
    aggregate,
    publish_database,
    cell,
    report_tables,
    viewer,
    genies_table,


# Every rule here starts with plan.require_data: without the data the plan is empty, and a job
# run on it would fail and cost its old outputs; the input function stops the run first.


# The workflow's own database (BUILT_DATABASE), from prediction files checked against their
# splits (genies.results.verify). It refuses to start while results/results.duckdb is open
# read-write elsewhere (it could not be replaced).
rule aggregate:
    input:
        plan.require_data,
        shifts=SHIFTS,
        data=plan.data_files(),
        forward=plan.forward_files(),
        predictions=plan.prediction_files(),
        published=PUBLISHED_FILES,
    output:
        BUILT_DATABASE,
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    params:
        capability_interventions=config["capability_interventions"],
        seed=config["seed"],
        expectations=plan.expectations(),
        test_examples=plan.cap("test"),
        database=DATABASE,
    script:
        "../workflow_scripts/aggregate.py"


# results/results.duckdb, the database users open: a copy of the built one, swapped in whole.
# `update`: Snakemake never deletes it, so it stays there while the next one is built and after a
# failed build; what was changed in it is kept aside (genies.results.database).
rule publish_database:
    input:
        plan.require_data,
        database=BUILT_DATABASE,
    output:
        update(DATABASE),
    log:
        "results/logs/publish_database.log",
    benchmark:
        "results/benchmarks/publish_database.tsv"
    script:
        "../workflow_scripts/publish_database.py"


rule report_tables:
    input:
        plan.require_data,
        database=BUILT_DATABASE,
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
        plan.require_data,
        database=BUILT_DATABASE,
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
            plan.require_data,
            published=PUBLISHED,
            data=lambda w: sorted(
                {plan.raw_input(d, "test") for d in plan.genies_datasets}
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
        plan.require_data,
        DATABASE,
        plan.prediction_files(),
        expand(list(REPORT_TEMPLATES.values()), model=plan.models),
        expand(VIEWER, model=plan.models),


# One cell, rebuilt from only its own inputs: snakemake results/cells/<model>/<intervention>/<shift>.json
rule cell:
    input:
        plan.require_data,
        shifts=SHIFTS,
        predictions=lambda w: plan.cell_files(w.model, w.intervention, w.shift),
        data=lambda w: plan.test_files(
            plan.cell_expectations(w.model, w.intervention, w.shift)
        ),
    output:
        CELL,
    log:
        "results/logs/cell/{model}/{intervention}/{shift}.log",
    benchmark:
        "results/benchmarks/cell/{model}/{intervention}/{shift}.tsv"
    params:
        capability_interventions=config["capability_interventions"],
        seed=config["seed"],
        expectations=lambda w: plan.cell_expectations(w.model, w.intervention, w.shift),
        test_examples=plan.cap("test"),
    script:
        "../workflow_scripts/cell.py"
