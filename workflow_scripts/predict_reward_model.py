"""Snakemake entry point: per-pair predictions of a sequence classifier from its rewards."""

from genies.methods.own_reward_models import write_reward_model_predictions
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
write_reward_model_predictions(
    data_file=snakemake.input.data,
    scores_file=snakemake.input.scores,
    out_path=snakemake.output[0],
    model=snakemake.wildcards.model,
    intervention=snakemake.wildcards.intervention,
    eval_dataset=snakemake.wildcards.eval,
)
