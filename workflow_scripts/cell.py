"""Snakemake entry point: one cell (model, intervention, shift) as JSON, from its own inputs."""

from genies.pipeline.jobs import log_file_of, setup_logging
from genies.results.cells import write_cell
from genies.results.verify import PredictionFile

setup_logging(log_file_of(snakemake))
write_cell(
    [PredictionFile.of(entry) for entry in snakemake.params.expectations],
    list(snakemake.input.data),
    snakemake.params.test_examples,
    snakemake.input.shifts,
    snakemake.output[0],
    snakemake.wildcards.model,
    snakemake.wildcards.intervention,
    snakemake.wildcards.shift,
    capability_interventions=snakemake.params.capability_interventions,
    seed=snakemake.params.seed,
)
