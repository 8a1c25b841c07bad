"""Snakemake entry point: validate one raw split and write it as Parquet."""

from genies.data import materialize
from genies.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))  # noqa: F821
materialize(
    snakemake.params.source,  # noqa: F821
    snakemake.wildcards.dataset,  # noqa: F821
    snakemake.wildcards.split,  # noqa: F821
    snakemake.output[0],  # noqa: F821
)
