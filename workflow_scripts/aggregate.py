"""Snakemake entry point: rebuild results/results.duckdb from the result files."""

from genies.pipeline.jobs import log_file_of, setup_logging
from genies.results.aggregate import build_database

setup_logging(log_file_of(snakemake))
build_database(
    snakemake.output[0],
    shifts_file=snakemake.input.shifts,
    data_files=list(snakemake.input.data),
    prediction_files=list(snakemake.input.predictions),
    run_files=list(snakemake.input.forward),
    capability_interventions=snakemake.params.capability_interventions,
    seed=snakemake.params.seed,
    published_files=list(snakemake.input.published),
)
