# Reward models of your own (docs/reward_models.md; genies.methods.own_reward_models). A sequence classifier
# scores each dataset's test responses in one GPU job per (reward model, dataset): an edited
# dataset reruns only its own job, and every intervention naming the classifier shares it. Like
# the forward job it runs over the model's GPUs with batches from the memory plan, smaller on
# each retry (model_job: gpus, memory, attempt). A
# DPO policy's implicit reward comes from the forward jobs of the policy and its reference
# (rules/forward.smk). CPU jobs make the pairs of each (base run model, intervention, dataset).
from genies.pipeline.plan import REWARD_SCORES

REWARD_MODELS = plan.of_family("reward_model")
DPO = plan.of_family("dpo")


rule score_reward_model:
    input:
        data=lambda w: DATA.format(dataset=w.dataset, split="test"),
        model=MODEL_DIR,
    output:
        REWARD_SCORES,
    log:
        "results/logs/score_reward_model/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/score_reward_model/{model}/{dataset}.tsv"
    retries: GPU_JOB_RETRIES
    threads: config["threads"]
    resources:
        **gpu_job_resources("score_reward_model"),
    params:
        limit=plan.cap("test"),
        scoring=SCORING,
        context_policy=config["context_policy"],
        versions=job_versions("score_reward_model"),
    script:
        "../workflow_scripts/score_reward_model.py"


rule predict_reward_model:
    input:
        data=lambda w: DATA.format(dataset=w.eval, split="test"),
        scores=lambda w: plan.reward_scores_file(w.intervention, w.eval),
    output:
        PREDICTION,
    log:
        "results/logs/predict/{model}/{intervention}/{train}/{eval}.log",
    benchmark:
        "results/benchmarks/predict_reward_model/{model}/{intervention}/{train}/{eval}.tsv"
    wildcard_constraints:
        intervention=_alternatives(REWARD_MODELS or ["-"]),
        train="none",
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(1000),
        runtime=by_attempt(5),
    script:
        "../workflow_scripts/predict_reward_model.py"


rule predict_dpo:
    input:
        unpack(lambda w: plan.dpo_forward_files(w.intervention, w.eval)),
        data=lambda w: DATA.format(dataset=w.eval, split="test"),
    output:
        PREDICTION,
    log:
        "results/logs/predict/{model}/{intervention}/{train}/{eval}.log",
    benchmark:
        "results/benchmarks/predict_dpo/{model}/{intervention}/{train}/{eval}.tsv"
    wildcard_constraints:
        intervention=_alternatives(DPO or ["-"]),
        train="none",
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_attempt(1000),
        runtime=by_attempt(5),
    params:
        beta=lambda w: plan.params(w.intervention)["beta"],
    script:
        "../workflow_scripts/predict_dpo.py"
