"""Snakemake entry point: pin what a distribution of the user's own reads."""

from genies.data.distributions import pin_source
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
pin_source(snakemake.wildcards.dataset, snakemake.params.source, snakemake.output[0])
