rule predict_zero_shot:
    input:
        data="results/data/{eval}/test.parquet",
        forward="results/forward/{model}/plain/{eval}/test.parquet",
    output:
        "results/predictions/{model}/zero_shot/none/{eval}.parquet",
    log:
        "results/logs/predict/{model}/zero_shot/none/{eval}.log",
    conda:
        ENV
    params:
        normalisation=config["scoring"]["normalisation"],
    script:
        "../workflow_scripts/predict_zero_shot.py"
