# Probe methods (MMS, LAT 1/2, CRA, CCS): CPU fits that read cached activations only.


rule fit_probe:
    input:
        data=lambda w: DATA.format(dataset=w.train, split="train"),
        scores=lambda w: FORWARD_SCORES.format(model=w.model, dataset=w.train),
        activations=lambda w: FORWARD_ACTIVATIONS.format(model=w.model, dataset=w.train),
    output:
        tensors=FIT_TENSORS,
        info=FIT_INFO,
    log:
        "results/logs/fit/{model}/{intervention}/{train}.log",
    benchmark:
        "results/benchmarks/fit/{model}/{intervention}/{train}.tsv"
    wildcard_constraints:
        intervention=_alternatives(PROBES or ["-"]),
    # Units are fitted in parallel chunks; the activations are memory-mapped (a 30B fit peaks
    # at about 2.5 GB, mostly the mapped file; bench/bench_probes.py --30b).
    threads: min(config["threads"], 4)
    resources:
        cpus_per_task=job_threads,
        mem_mb=by_model_size(2000, 100),
        runtime=by_attempt(30),
    params:
        params=lambda w: plan.params(w.intervention),
        seed=config["seed"],
        limit=plan.cap("train"),
        versions=job_versions("fit_probe"),
    script:
        "../workflow_scripts/fit_probe.py"


rule predict_probe:
    input:
        data=lambda w: DATA.format(dataset=w.eval, split="test"),
        scores=lambda w: FORWARD_SCORES.format(model=w.model, dataset=w.eval),
        activations=lambda w: FORWARD_ACTIVATIONS.format(model=w.model, dataset=w.eval),
        tensors=FIT_TENSORS,
        info=FIT_INFO,
    output:
        PREDICTION,
    log:
        "results/logs/predict/{model}/{intervention}/{train}/{eval}.log",
    benchmark:
        "results/benchmarks/predict_probe/{model}/{intervention}/{train}/{eval}.tsv"
    wildcard_constraints:
        intervention=_alternatives(PROBES or ["-"]),
    resources:
        cpus_per_task=1,
        mem_mb=by_model_size(2000, 100),
        runtime=by_attempt(10),
    params:
        limit=plan.cap("test"),
        versions=job_versions("predict_probe"),
    script:
        "../workflow_scripts/predict_probe.py"
