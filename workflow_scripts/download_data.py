"""Snakemake entry point: fetch the GENIES data archive when data_dir is missing."""

from genies.data.download import fetch_data
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake), echo=True)
fetch_data(
    snakemake.params.data_dir,
    snakemake.params.data_url,
    snakemake.params.dest,
    snakemake.params.shifts,
)
