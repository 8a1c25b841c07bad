rule predict_zero_shot:
    input:
        data="results/data/{eval}/test.parquet",
        forward="results/forward/{model}/plain/{eval}/test.parquet",
    output:
        "results/predictions/{model}/zero_shot/none/{eval}.parquet",
    log:
        "results/logs/predict/{model}/zero_shot/none/{eval}.log",
    conda:
        ENV
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(2000),
        runtime=by_attempt(10),
    params:
        normalisation=config["scoring"]["normalisation"],
    script:
        "../workflow_scripts/predict_zero_shot.py"


rule predict_random:
    input:
        data="results/data/{eval}/test.parquet",
    output:
        "results/predictions/{model}/random/none/{eval}.parquet",
    log:
        "results/logs/predict/{model}/random/none/{eval}.log",
    conda:
        ENV
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(1000),
        runtime=by_attempt(5),
    params:
        seed=config["seed"],
        limit=plan.cap("test"),
    script:
        "../workflow_scripts/predict_random.py"


rule few_shot_prompts:
    input:
        eval="results/data/{eval}/test.parquet",
        source="results/data/{train}/train.parquet",
    output:
        "results/few_shot_prompts/{train}/{eval}.parquet",
    log:
        "results/logs/few_shot_prompts/{train}/{eval}.log",
    conda:
        ENV
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(1000),
        runtime=by_attempt(5),
    params:
        n_shots=lambda w: config["interventions"]["few_shot"].get("n_shots", 5),
        seed=config["seed"],
        eval_limit=plan.cap("test"),
        source_limit=plan.cap("train"),
    script:
        "../workflow_scripts/few_shot_prompts.py"


rule predict_few_shot:
    input:
        data="results/few_shot_prompts/{train}/{eval}.parquet",
        model="resources/models/{model}",
    output:
        scores="results/few_shot_scores/{model}/{train}/{eval}.parquet",
        predictions="results/predictions/{model}/few_shot/{train}/{eval}.parquet",
    log:
        "results/logs/predict/{model}/few_shot/{train}/{eval}.log",
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=1,
        cpus_per_gpu=job_threads,
        mem_mb=by_model_size(4000, 2500),
        runtime=by_model_size(20, 12),
    params:
        batch_tokens=config["scoring"]["batch_tokens"],
        device=config["scoring"]["device"],
        dtype=config["scoring"]["dtype"],
        normalisation=config["scoring"]["normalisation"],
    script:
        "../workflow_scripts/predict_few_shot.py"
