rule forward:
    input:
        data="results/data/{dataset}/{split}.parquet",
        model="resources/models/{model}",
    output:
        "results/forward/{model}/{stimulus}/{dataset}/{split}.parquet",
    log:
        "results/logs/forward/{model}/{stimulus}/{dataset}/{split}.log",
    benchmark:
        "results/benchmarks/forward/{model}/{stimulus}/{dataset}/{split}.tsv"
    conda:
        ENV
    threads: config["threads"]
    params:
        limit=lambda w: plan.cap(w.split),
        batch_tokens=config["scoring"]["batch_tokens"],
        device=config["scoring"]["device"],
        dtype=config["scoring"]["dtype"],
    script:
        "../workflow_scripts/forward.py"
