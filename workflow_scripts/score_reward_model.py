"""Snakemake entry point: a sequence-classification reward model's rewards of one dataset."""

from genies.methods.reward_classifier import write_reward_scores
from genies.pipeline.jobs import log_file_of, model_job, setup_logging

setup_logging(log_file_of(snakemake))
write_reward_scores(
    data_file=snakemake.input.data,
    model_dir=snakemake.input.model,
    out_path=snakemake.output[0],
    model_name=snakemake.wildcards.model,
    dataset=snakemake.wildcards.dataset,
    limit=snakemake.params.limit,
    scoring=snakemake.params.scoring,
    job=model_job(snakemake),
)
