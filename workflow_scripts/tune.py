"""Snakemake entry point: train a reward model (LoRA / QLoRA, prompt tuning), resumably."""

from genies.jobs import log_file_of, setup_logging
from genies.training import train_reward_model

setup_logging(log_file_of(snakemake))  # noqa: F821
train_reward_model(
    model_dir=snakemake.input.model,  # noqa: F821
    train_file=snakemake.input.data,  # noqa: F821
    out_dir=snakemake.output[0],  # noqa: F821
    method=snakemake.wildcards.intervention,  # noqa: F821
    params=dict(snakemake.params.params),  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    dataset=snakemake.wildcards.train,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
    model_name=snakemake.wildcards.model,  # noqa: F821
)
