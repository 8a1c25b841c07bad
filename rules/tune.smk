# Trained reward models (LoRA / QLoRA, prompt tuning). One training per (model, method,
# dataset): a shift's source and a target reference train the same job.


rule tune:
    input:
        data="results/data/{train}/train.parquet",
        model="resources/models/{model}",
    output:
        directory("results/tune/{model}/{intervention}/{train}"),
    log:
        "results/logs/tune/{model}/{intervention}/{train}.log",
    benchmark:
        "results/benchmarks/tune/{model}/{intervention}/{train}.tsv"
    wildcard_constraints:
        intervention=_alternatives(TUNED or ["-"]),
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=1,
        cpus_per_gpu=job_threads,
        mem_mb=by_model_size(6000, 4000),
        runtime=by_model_size(30, 10),
    params:
        params=tune_params,
        seed=config["seed"],
    script:
        "../workflow_scripts/tune.py"


rule predict_tuned:
    input:
        data="results/data/{eval}/test.parquet",
        model="resources/models/{model}",
        adapter="results/tune/{model}/{intervention}/{train}",
    output:
        "results/predictions/{model}/{intervention}/{train}/{eval}.parquet",
    log:
        "results/logs/predict/{model}/{intervention}/{train}/{eval}.log",
    wildcard_constraints:
        intervention=_alternatives(TUNED or ["-"]),
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=1,
        cpus_per_gpu=job_threads,
        mem_mb=by_model_size(4000, 2500),
        runtime=by_model_size(20, 6),
    params:
        limit=plan.cap("test"),
        device=config["scoring"]["device"],
    script:
        "../workflow_scripts/predict_tuned.py"
