"""Snakemake entry point: one batched forward pass over a (model, stimulus, dataset, split)."""

from genies.forward import run_forward
from genies.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))  # noqa: F821
run_forward(
    data_file=snakemake.input.data,  # noqa: F821
    model_dir=snakemake.input.model,  # noqa: F821
    out_path=snakemake.output.scores,  # noqa: F821
    activations_path=snakemake.output.activations,  # noqa: F821
    model_name=snakemake.wildcards.model,  # noqa: F821
    dataset=snakemake.wildcards.dataset,  # noqa: F821
    split=snakemake.wildcards.split,  # noqa: F821
    stimulus=snakemake.wildcards.stimulus,  # noqa: F821
    limit=snakemake.params.limit,  # noqa: F821
    batch_tokens=snakemake.params.batch_tokens,  # noqa: F821
    device=snakemake.params.device,  # noqa: F821
    dtype=snakemake.params.dtype,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
