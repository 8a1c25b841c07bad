"""Snakemake entry point: the static per-example viewer of one model (results/viewer/<model>/)."""

from genies.pipeline.jobs import log_file_of, setup_logging
from genies.results.viewer import write_viewer

setup_logging(log_file_of(snakemake))
write_viewer(
    snakemake.input.database,
    list(snakemake.input.data),
    snakemake.wildcards.model,
    snakemake.output[0],
)
