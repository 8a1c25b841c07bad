"""Snakemake entry point: validate one raw split and write it as Parquet."""

from genies.data.materialise import materialise
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
materialise(
    snakemake.params.source,
    snakemake.wildcards.dataset,
    snakemake.wildcards.split,
    snakemake.output[0],
    long_example_chars=snakemake.params.long_example_chars,
)
