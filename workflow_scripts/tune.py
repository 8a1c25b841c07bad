"""Snakemake entry point: train a reward model (LoRA / QLoRA, prompt tuning), resumably."""

from genies.jobs import log_file_of, setup_logging
from genies.training import train_reward_model

setup_logging(log_file_of(snakemake))
train_reward_model(
    model_dir=snakemake.input.model,
    train_file=snakemake.input.data,
    out_dir=snakemake.output[0],
    method=snakemake.wildcards.intervention,
    params=dict(snakemake.params.params),
    seed=snakemake.params.seed,
    dataset=snakemake.wildcards.train,
    threads=snakemake.threads,
    model_name=snakemake.wildcards.model,
)
