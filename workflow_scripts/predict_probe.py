"""Snakemake entry point: per-pair predictions of a fitted probe on an eval split."""

from genies.jobs import log_file_of, setup_logging
from genies.probes import run_predict

setup_logging(log_file_of(snakemake))
run_predict(
    snakemake.wildcards.model,
    snakemake.wildcards.intervention,
    snakemake.wildcards.train,
    snakemake.wildcards.eval,
    snakemake.input.data,
    snakemake.input.activations,
    snakemake.input.scores,
    (snakemake.input.tensors, snakemake.input.info),
    snakemake.output[0],
    limit=snakemake.params.limit,
)
