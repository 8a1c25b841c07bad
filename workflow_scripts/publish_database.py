"""Snakemake entry point: swap a copy of the built database in as results/results.duckdb."""

from genies.pipeline.jobs import log_file_of, setup_logging
from genies.results.database import publish

setup_logging(log_file_of(snakemake))
publish(snakemake.input.database, snakemake.output[0])
