# Predictions that need no model: they read the forward and few-shot scores (CPU jobs).


rule predict_zero_shot:
    input:
        data=lambda w: DATA.format(dataset=w.eval, split="test"),
        forward=lambda w: FORWARD_SCORES.format(model=w.model, dataset=w.eval),
    output:
        PREDICTION,
    log:
        "results/logs/predict/{model}/{intervention}/{train}/{eval}.log",
    benchmark:
        "results/benchmarks/predict_zero_shot/{model}/{intervention}/{train}/{eval}.tsv"
    wildcard_constraints:
        intervention="zero_shot",
        train="none",
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
        data=lambda w: DATA.format(dataset=w.eval, split="test"),
    output:
        PREDICTION,
    log:
        "results/logs/predict/{model}/{intervention}/{train}/{eval}.log",
    benchmark:
        "results/benchmarks/predict_random/{model}/{intervention}/{train}/{eval}.tsv"
    wildcard_constraints:
        intervention="random",
        train="none",
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
        eval=lambda w: DATA.format(dataset=w.eval, split="test"),
        source=lambda w: DATA.format(dataset=w.train, split="train"),
    output:
        FEW_SHOT_PROMPTS,
    log:
        "results/logs/few_shot_prompts/{train}/{eval}.log",
    benchmark:
        "results/benchmarks/few_shot_prompts/{train}/{eval}.tsv"
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(1000),
        runtime=by_attempt(5),
    params:
        n_shots=lambda w: plan.params("few_shot")["n_shots"],
        seed=config["seed"],
        eval_limit=plan.cap("test"),
        source_limit=plan.cap("train"),
    script:
        "../workflow_scripts/few_shot_prompts.py"


rule predict_few_shot:
    input:
        prompts=FEW_SHOT_PROMPTS,
        scores=FEW_SHOT_SCORES,
    output:
        PREDICTION,
    log:
        "results/logs/predict/{model}/{intervention}/{train}/{eval}.log",
    benchmark:
        "results/benchmarks/predict_few_shot/{model}/{intervention}/{train}/{eval}.tsv"
    wildcard_constraints:
        intervention="few_shot",
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(2000),
        runtime=by_attempt(10),
    params:
        normalisation=config["scoring"]["normalisation"],
    script:
        "../workflow_scripts/predict_few_shot.py"
