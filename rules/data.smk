localrules:
    download_data,
    pin_distribution,


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
    wildcard_constraints:
        dataset=_alternatives(plan.genies_datasets),
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(2000),
        runtime=by_attempt(15),
    params:
        source=str(plan.data_location),
        long_example_chars=config["long_example_chars"],
    script:
        "../workflow_scripts/materialise.py"


# A distribution of the user's own (`distributions:`, genies.data.distributions): its pin fixes
# what both splits read (a Hub revision's commit, downloaded into the Hugging Face cache, or the
# local files' sha256). Local: it may download, and compute nodes are often offline. An edited
# file reruns it (input), and then both splits and everything that reads them.
rule pin_distribution:
    input:
        lambda w: plan.distribution_files(w.dataset),
    output:
        DISTRIBUTION_PIN,
    log:
        "results/logs/pin_distribution/{dataset}.log",
    benchmark:
        "results/benchmarks/pin_distribution/{dataset}.tsv"
    wildcard_constraints:
        dataset=_alternatives(plan.distributions),
    params:
        source=lambda w: plan.distribution_source(w.dataset),
    script:
        "../workflow_scripts/pin_distribution.py"


# The same Parquet file as `materialise` writes for a GENIES dataset, from the pinned source.
rule materialise_distribution:
    input:
        DISTRIBUTION_PIN,
    output:
        DATA,
    log:
        "results/logs/materialise/{dataset}/{split}.log",
    benchmark:
        "results/benchmarks/materialise/{dataset}/{split}.tsv"
    wildcard_constraints:
        dataset=_alternatives(plan.distributions),
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(4000),
        runtime=by_attempt(15),
    params:
        spec=lambda w: plan.distributions[w.dataset],
        long_example_chars=config["long_example_chars"],
    script:
        "../workflow_scripts/materialise_distribution.py"


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
