"""Snakemake entry point: fit a probe method (MMS, LAT, CRA, CCS) on cached activations."""

from genies.jobs import log_file_of, setup_logging
from genies.probes import run_fit

setup_logging(log_file_of(snakemake))  # noqa: F821
run_fit(
    snakemake.wildcards.intervention,  # noqa: F821
    snakemake.wildcards.train,  # noqa: F821
    snakemake.input.data,  # noqa: F821
    snakemake.input.activations,  # noqa: F821
    snakemake.input.scores,  # noqa: F821
    (snakemake.output.tensors, snakemake.output.info),  # noqa: F821
    params=snakemake.params.params,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    limit=snakemake.params.limit,  # noqa: F821
)
