"""Snakemake entry point: prepare resources/models/<model>/ from a registry entry, after
checking the model's GPU count (from the config) against its weights, which this job reads."""

from genies.models.prepare import prepare_model
from genies.pipeline.gpus import check_model_gpus
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
check_model_gpus(snakemake.config, snakemake.wildcards.model)
prepare_model(dict(snakemake.params.spec), snakemake.output[0])
