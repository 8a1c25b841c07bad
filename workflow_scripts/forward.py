"""Snakemake entry point: one batched forward pass over a (model, stimulus, dataset, split)."""

from genies.forward import run_forward
from genies.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
run_forward(
    data_file=snakemake.input.data,
    model_dir=snakemake.input.model,
    out_path=snakemake.output.scores,
    activations_path=snakemake.output.activations,
    model_name=snakemake.wildcards.model,
    dataset=snakemake.wildcards.dataset,
    split=snakemake.wildcards.split,
    stimulus=snakemake.wildcards.stimulus,
    limit=snakemake.params.limit,
    batch_tokens=snakemake.params.batch_tokens,
    device=snakemake.params.device,
    dtype=snakemake.params.dtype,
    threads=snakemake.threads,
)
