# Trained reward models (LoRA / QLoRA, prompt tuning). One job per (model, method, dataset)
# trains, then predicts every dataset the reward model is evaluated on with the same loaded
# model. A shift's source and a target reference train the same job. When only an evaluated
# dataset changed, the rerun finds the finished training in its work directory (same
# fingerprint) and only predicts.


rule tune:
    input:
        data=lambda w: DATA.format(dataset=w.train, split="train"),
        evals=lambda w: [
            DATA.format(dataset=e, split="test")
            for e in plan.tuned_evals(w.intervention, w.train)
        ],
        model=MODEL_DIR,
    output:
        adapter=directory(ADAPTER),
        predictions=TUNED_PREDICTIONS,
    log:
        "results/logs/tune/{model}/{intervention}/{train}.log",
    benchmark:
        "results/benchmarks/tune/{model}/{intervention}/{train}.tsv"
    wildcard_constraints:
        intervention=_alternatives(TUNED or ["-"]),
    retries: GPU_JOB_RETRIES
    threads: config["threads"]
    resources:
        **gpu_job_resources("tune"),
    params:
        params=tune_params,
        seed=config["seed"],
        evals=lambda w: plan.tuned_evals(w.intervention, w.train),
        limit=plan.cap("test"),
        context_policy=config["context_policy"],
        versions=lambda w: job_versions("tune", params=plan.params(w.intervention)),
    script:
        "../workflow_scripts/tune.py"
