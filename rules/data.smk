rule materialise:
    input:
        lambda w: plan.raw_input(w.dataset, w.split),
        lambda w: plan.raw_input(w.dataset, "train"),
    output:
        "results/data/{dataset}/{split}.parquet",
    log:
        "results/logs/materialise/{dataset}/{split}.log",
    conda:
        ENV
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(2000),
        runtime=by_attempt(15),
    params:
        source=config["data_dir"],
    script:
        "../workflow_scripts/materialise.py"


rule shift_registry:
    output:
        "results/shifts.parquet",
    log:
        "results/logs/shift_registry.log",
    conda:
        ENV
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(1000),
        runtime=by_attempt(5),
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
