localrules:
    download_data,


# Fetches the GENIES archive from data_url to DOWNLOADED_DATA when data_dir is missing (the library
# checks it before moving it into place). No output: the data is the workflow's input, so
# --forceall and --delete-all-output never touch it; while it is missing the plan is empty and
# the rules every result starts from stop with the advice to run this (plan.require_data).
# Local: compute nodes are often offline.
rule download_data:
    log:
        "results/logs/download_data.log",
    benchmark:
        "results/benchmarks/download_data.tsv"
    params:
        data_dir=config["data_dir"],
        data_url=config["data_url"],
        dest=DOWNLOADED_DATA,
        shifts=config["shifts"],
    script:
        "../workflow_scripts/download_data.py"


rule materialise:
    input:
        lambda w: plan.raw_input(w.dataset, w.split),
        lambda w: plan.raw_input(w.dataset, "train"),
    output:
        DATA,
    log:
        "results/logs/materialise/{dataset}/{split}.log",
    benchmark:
        "results/benchmarks/materialise/{dataset}/{split}.tsv"
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(2000),
        runtime=by_attempt(15),
    params:
        source=str(plan.data_location),
        long_example_chars=config["long_example_chars"],
    script:
        "../workflow_scripts/materialise.py"


rule shift_registry:
    input:
        plan.require_data,
    output:
        SHIFTS,
    log:
        "results/logs/shift_registry.log",
    benchmark:
        "results/benchmarks/shift_registry.tsv"
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(1000),
        runtime=by_attempt(5),
    params:
        shifts=[vars(s) for s in plan.shifts],
        sets={name: [vars(s) for s in set_] for name, set_ in plan.shift_sets.items()},
    script:
        "../workflow_scripts/shift_registry.py"


rule all_data:
    input:
        plan.require_data,
        expand(DATA, dataset=plan.available_datasets, split=SPLITS),
