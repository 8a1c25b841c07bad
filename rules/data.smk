rule materialize:
    input:
        lambda w: plan.raw_input(w.dataset, w.split),
        lambda w: plan.raw_input(w.dataset, "train"),
    output:
        "results/data/{dataset}/{split}.parquet",
    log:
        "results/logs/materialize/{dataset}/{split}.log",
    conda:
        ENV
    params:
        source=config["data_dir"],
    script:
        "../workflow_scripts/materialize.py"


rule shift_registry:
    output:
        "results/shifts.parquet",
    log:
        "results/logs/shift_registry.log",
    conda:
        ENV
    params:
        shifts=[vars(s) for s in plan.shifts],
        genies_pairs=plan.genies_pairs,
    script:
        "../workflow_scripts/shift_registry.py"


rule all_data:
    input:
        expand(
            "results/data/{dataset}/{split}.parquet",
            dataset=plan.available_datasets,
            split=["train", "test"],
        ),
