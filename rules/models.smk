rule prepare_model:
    output:
        directory(MODEL_DIR),
    log:
        "results/logs/prepare_model/{model}.log",
    benchmark:
        "results/benchmarks/prepare_model/{model}.tsv"
    resources:
        cpus_per_task=job_threads,
        mem_mb=prepare_model_mem_mb,
        runtime=by_model_size(10, 2),
    params:
        spec=lambda w: config["models"][w.model],
        versions=lambda w: job_versions("prepare_model", spec=config["models"][w.model]),
    script:
        "../workflow_scripts/prepare_model.py"
