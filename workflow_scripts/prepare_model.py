"""Snakemake entry point: prepare resources/models/<model>/ from a registry entry."""

from genies.jobs import log_file_of, setup_logging
from genies.models import prepare_model

setup_logging(log_file_of(snakemake))
prepare_model(dict(snakemake.params.spec), snakemake.output[0])
