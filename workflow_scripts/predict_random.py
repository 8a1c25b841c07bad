"""Snakemake entry point: the random baseline (probability 0.5, seeded coin per pair)."""

from genies.baselines import write_random_predictions
from genies.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))  # noqa: F821
write_random_predictions(
    snakemake.input.data,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    snakemake.wildcards.model,  # noqa: F821
    snakemake.wildcards.eval,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    limit=snakemake.params.limit,  # noqa: F821
)
