"""Snakemake entry point: the GENIES table of one model as CSV, Markdown, plots and JSON."""

from genies.pipeline.jobs import log_file_of, setup_logging
from genies.results.report import write_reports

setup_logging(log_file_of(snakemake))
write_reports(
    snakemake.input.database,
    snakemake.wildcards.model,
    dict(snakemake.output.items()),
    config=snakemake.params.config,
    model_dirs=dict(zip(snakemake.params.models, snakemake.input.models, strict=True)),
)
