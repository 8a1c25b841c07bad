rule prepare_model:
    output:
        directory("resources/models/{model}"),
    log:
        "results/logs/prepare_model/{model}.log",
    conda:
        ENV
    params:
        spec=lambda w: config["models"][w.model],
    script:
        "../workflow_scripts/prepare_model.py"
