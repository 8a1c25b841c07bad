"""Snakemake entry point: load, validate and write one split of a distribution of the user's
own as Parquet."""

from genies.data.distributions import materialise_distribution
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
materialise_distribution(
    snakemake.wildcards.dataset,
    snakemake.params.spec,
    snakemake.wildcards.split,
    snakemake.input[0],
    snakemake.output[0],
    long_example_chars=snakemake.params.long_example_chars,
)
