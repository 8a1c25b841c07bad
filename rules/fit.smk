# Probe methods (MMS, LAT 1/2, CRA, CCS): CPU fits that read cached activations only.


rule fit_probe:
    input:
        data="results/data/{train}/train.parquet",
        scores=lambda w: f"results/forward/{w.model}/{probe_stimulus(w)}/{w.train}/train.parquet",
        activations=lambda w: (
            f"results/forward/{w.model}/{probe_stimulus(w)}/{w.train}/train.safetensors"
        ),
    output:
        tensors="results/fit/{model}/{intervention}/{train}.safetensors",
        info="results/fit/{model}/{intervention}/{train}.json",
    log:
        "results/logs/fit/{model}/{intervention}/{train}.log",
    wildcard_constraints:
        intervention=_alternatives(PROBES or ["-"]),
    conda:
        ENV
    resources:
        cpus_per_task=1,
        mem_mb=by_model_size(2000, 500),
        runtime=by_attempt(30),
    params:
        params=lambda w: config["interventions"][w.intervention],
        seed=config["seed"],
        limit=plan.cap("train"),
    script:
        "../workflow_scripts/fit_probe.py"


rule predict_probe:
    input:
        data="results/data/{eval}/test.parquet",
        scores=lambda w: f"results/forward/{w.model}/{probe_stimulus(w)}/{w.eval}/test.parquet",
        activations=lambda w: (
            f"results/forward/{w.model}/{probe_stimulus(w)}/{w.eval}/test.safetensors"
        ),
        tensors="results/fit/{model}/{intervention}/{train}.safetensors",
        info="results/fit/{model}/{intervention}/{train}.json",
    output:
        "results/predictions/{model}/{intervention}/{train}/{eval}.parquet",
    log:
        "results/logs/predict/{model}/{intervention}/{train}/{eval}.log",
    wildcard_constraints:
        intervention=_alternatives(PROBES or ["-"]),
    conda:
        ENV
    resources:
        cpus_per_task=1,
        mem_mb=by_model_size(2000, 500),
        runtime=by_attempt(10),
    params:
        limit=plan.cap("test"),
    script:
        "../workflow_scripts/predict_probe.py"
