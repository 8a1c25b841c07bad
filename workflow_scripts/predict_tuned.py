"""Snakemake entry point: per-pair predictions of a trained reward model on an eval split."""

from genies.jobs import log_file_of, setup_logging
from genies.reward_model import predict_reward_model

setup_logging(log_file_of(snakemake))  # noqa: F821
predict_reward_model(
    model_dir=snakemake.input.model,  # noqa: F821
    adapter_dir=snakemake.input.adapter,  # noqa: F821
    data_file=snakemake.input.data,  # noqa: F821
    out_path=snakemake.output[0],  # noqa: F821
    model_name=snakemake.wildcards.model,  # noqa: F821
    intervention=snakemake.wildcards.intervention,  # noqa: F821
    train=snakemake.wildcards.train,  # noqa: F821
    eval_dataset=snakemake.wildcards.eval,  # noqa: F821
    limit=snakemake.params.limit,  # noqa: F821
    device=snakemake.params.device,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
