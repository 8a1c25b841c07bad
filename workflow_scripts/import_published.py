"""Snakemake entry point: convert the published GENIES results/ folder into Parquet once."""

from genies.pipeline.jobs import log_file_of, setup_logging
from genies.results.published import import_published

setup_logging(log_file_of(snakemake))
import_published(
    snakemake.input.published,
    snakemake.params.data_dir,
    {name: snakemake.output[name] for name in snakemake.output.keys()},
)
