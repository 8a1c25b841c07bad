rule forward:
    input:
        data="results/data/{dataset}/{split}.parquet",
        model="resources/models/{model}",
    output:
        scores="results/forward/{model}/{stimulus}/{dataset}/{split}.parquet",
        activations="results/forward/{model}/{stimulus}/{dataset}/{split}.safetensors",
    log:
        "results/logs/forward/{model}/{stimulus}/{dataset}/{split}.log",
    benchmark:
        "results/benchmarks/forward/{model}/{stimulus}/{dataset}/{split}.tsv"
    conda:
        ENV
    threads: config["threads"]
    resources:
        gpu=1,
        cpus_per_gpu=job_threads,
        mem_mb=by_model_size(4000, 2500),
        runtime=by_model_size(20, 6),
    params:
        limit=lambda w: plan.cap(w.split),
        batch_tokens=config["scoring"]["batch_tokens"],
        device=config["scoring"]["device"],
        dtype=config["scoring"]["dtype"],
    script:
        "../workflow_scripts/forward.py"
