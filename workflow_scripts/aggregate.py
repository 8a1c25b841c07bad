"""Snakemake entry point: rebuild results/results.duckdb from the result files."""

from genies.aggregate import build_database
from genies.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))  # noqa: F821
build_database(
    snakemake.output[0],  # noqa: F821
    shifts_file=snakemake.input.shifts,  # noqa: F821
    data_files=list(snakemake.input.data),  # noqa: F821
    prediction_files=list(snakemake.input.predictions),  # noqa: F821
    run_files=list(snakemake.input.forward),  # noqa: F821
    capability_interventions=snakemake.params.capability_interventions,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
)
