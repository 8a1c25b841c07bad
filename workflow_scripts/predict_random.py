"""Snakemake entry point: the random baseline (probability 0.5, seeded coin per pair)."""

from genies.forward.baselines import write_random_predictions
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
write_random_predictions(
    snakemake.input.data,
    snakemake.output[0],
    snakemake.wildcards.model,
    snakemake.wildcards.eval,
    seed=snakemake.params.seed,
    limit=snakemake.params.limit,
)
