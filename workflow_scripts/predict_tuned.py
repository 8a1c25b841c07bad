"""Snakemake entry point: per-pair predictions of a trained reward model on an eval split."""

from genies.jobs import log_file_of, setup_logging
from genies.reward_model import predict_reward_model

setup_logging(log_file_of(snakemake))
predict_reward_model(
    model_dir=snakemake.input.model,
    adapter_dir=snakemake.input.adapter,
    data_file=snakemake.input.data,
    out_path=snakemake.output[0],
    model_name=snakemake.wildcards.model,
    intervention=snakemake.wildcards.intervention,
    train=snakemake.wildcards.train,
    eval_dataset=snakemake.wildcards.eval,
    limit=snakemake.params.limit,
    device=snakemake.params.device,
    threads=snakemake.threads,
)
