"""Snakemake entry point: one cell (model, intervention, shift) as JSON, from its own inputs."""

from genies.cells import write_cell
from genies.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))  # noqa: F821
write_cell(
    list(snakemake.input.predictions),  # noqa: F821
    snakemake.input.shifts,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    snakemake.wildcards.model,  # noqa: F821
    snakemake.wildcards.intervention,  # noqa: F821
    snakemake.wildcards.shift,  # noqa: F821
    capability_interventions=snakemake.params.capability_interventions,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
)
