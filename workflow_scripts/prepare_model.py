"""Snakemake entry point: prepare resources/models/<model>/ from a registry entry."""

from genies.models.prepare import prepare_model
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
prepare_model(dict(snakemake.params.spec), snakemake.output[0])
