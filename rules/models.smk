rule prepare_model:
    output:
        directory("resources/models/{model}"),
    params:
        spec=lambda w: config["models"][w.model],
    log:
        "results/logs/prepare_model/{model}.log",
    conda:
        ENV
    script:
        "../workflow_scripts/prepare_model.py"
