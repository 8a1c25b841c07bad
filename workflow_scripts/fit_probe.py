"""Snakemake entry point: fit a probe method (MMS, LAT, CRA, CCS) on cached activations."""

from genies.methods.probes import run_fit
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
run_fit(
    snakemake.wildcards.intervention,
    snakemake.wildcards.train,
    snakemake.input.data,
    snakemake.input.activations,
    snakemake.input.scores,
    (snakemake.output.tensors, snakemake.output.info),
    params=snakemake.params.params,
    seed=snakemake.params.seed,
    limit=snakemake.params.limit,
    threads=snakemake.threads,
)
