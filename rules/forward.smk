# One job per (model, dataset) loads the model once and runs every split and stimulus the
# configured interventions need (plan.forward_work): zero-shot log-probs and the activations
# the probes read (a DPO policy or reference that is not a run model: its plain log-probs only).
# Few-shot prompts are scored per (model, eval dataset), all sources at once.


rule forward:
    input:
        data=lambda w: plan.forward_data(w.dataset, w.model),
        model=MODEL_DIR,
    output:
        scores=FORWARD_SCORES,
        activations=FORWARD_ACTIVATIONS,
    log:
        "results/logs/forward/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/forward/{model}/{dataset}.tsv"
    retries: GPU_JOB_RETRIES
    threads: config["threads"]
    resources:
        **gpu_job_resources("forward"),
    params:
        work=lambda w: plan.forward_work(w.dataset, w.model),
        limits=lambda w: {
            split: plan.cap(split) for split in plan.forward_work(w.dataset)
        },
        scoring=SCORING,
        context_policy=config["context_policy"],
        versions=job_versions("forward"),
    script:
        "../workflow_scripts/forward.py"


rule score_few_shot:
    input:
        prompts=lambda w: [
            FEW_SHOT_PROMPTS.format(train=t, eval=w.eval)
            for t in plan.few_shot_sources(w.eval)
        ],
        model=MODEL_DIR,
    output:
        FEW_SHOT_SCORES,
    log:
        "results/logs/score_few_shot/{model}/{eval}.log",
    benchmark:
        "results/benchmarks/score_few_shot/{model}/{eval}.tsv"
    retries: GPU_JOB_RETRIES
    threads: config["threads"]
    resources:
        **gpu_job_resources("score_few_shot"),
    params:
        sources=lambda w: plan.few_shot_sources(w.eval),
        scoring=SCORING,
        context_policy=config["context_policy"],
        versions=job_versions("score_few_shot"),
    script:
        "../workflow_scripts/score_few_shot.py"
