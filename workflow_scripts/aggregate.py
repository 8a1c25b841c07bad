"""Snakemake entry point: rebuild the workflow's database from the result files, once the
prediction files hold exactly their splits' pairs."""

from genies.pipeline.jobs import log_file_of, setup_logging
from genies.results.aggregate import build_database
from genies.results.database import require_not_held
from genies.results.verify import PredictionFile, read_checked

setup_logging(log_file_of(snakemake))
require_not_held(snakemake.params.database)
build_database(
    snakemake.output[0],
    shifts_file=snakemake.input.shifts,
    data_files=list(snakemake.input.data),
    predictions=read_checked(
        [PredictionFile.of(entry) for entry in snakemake.params.expectations],
        list(snakemake.input.data),
        snakemake.params.test_examples,
    ),
    run_files=[*snakemake.input.forward, *snakemake.input.predictions],
    capability_interventions=snakemake.params.capability_interventions,
    seed=snakemake.params.seed,
    published_files=list(snakemake.input.published),
)
