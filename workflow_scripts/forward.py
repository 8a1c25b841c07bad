"""Snakemake entry point: one model load runs every split and stimulus a dataset needs."""

from genies.forward.job import run_forward
from genies.pipeline.jobs import log_file_of, model_job, setup_logging

setup_logging(log_file_of(snakemake))
run_forward(
    data_files=dict(zip(snakemake.params.work, snakemake.input.data, strict=True)),
    model_dir=snakemake.input.model,
    scores_path=snakemake.output.scores,
    activations_path=snakemake.output.activations,
    model_name=snakemake.wildcards.model,
    dataset=snakemake.wildcards.dataset,
    work=snakemake.params.work,
    limits=snakemake.params.limits,
    scoring=snakemake.params.scoring,
    job=model_job(snakemake),
)
