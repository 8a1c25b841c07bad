"""Snakemake entry point: per-pair predictions of a fitted probe on an eval split."""

from genies.jobs import log_file_of, setup_logging
from genies.probes import run_predict

setup_logging(log_file_of(snakemake))  # noqa: F821
run_predict(
    snakemake.wildcards.model,  # noqa: F821
    snakemake.wildcards.intervention,  # noqa: F821
    snakemake.wildcards.train,  # noqa: F821
    snakemake.wildcards.eval,  # noqa: F821
    snakemake.input.data,  # noqa: F821
    snakemake.input.activations,  # noqa: F821
    snakemake.input.scores,  # noqa: F821
    (snakemake.input.tensors, snakemake.input.info),  # noqa: F821
    snakemake.output[0],  # noqa: F821
    limit=snakemake.params.limit,  # noqa: F821
)
