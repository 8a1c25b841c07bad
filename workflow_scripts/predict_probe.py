"""Snakemake entry point: per-pair predictions of a fitted probe on an eval split."""

from genies.methods.probes import run_predict
from genies.pipeline.jobs import log_file_of, setup_logging

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
