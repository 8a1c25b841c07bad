"""Snakemake entry point: train a reward model (resumably), then predict its eval datasets."""

from genies.methods.tuned.job import run_tune_job
from genies.pipeline.jobs import log_file_of, model_job, setup_logging

setup_logging(log_file_of(snakemake))
run_tune_job(
    model_dir=snakemake.input.model,
    train_file=snakemake.input.data,
    eval_files=dict(zip(snakemake.params.evals, snakemake.input.evals, strict=True)),
    out_dir=snakemake.output.adapter,
    predictions_path=snakemake.output.predictions,
    method=snakemake.wildcards.intervention,
    params=dict(snakemake.params.params),
    seed=snakemake.params.seed,
    dataset=snakemake.wildcards.train,
    model_name=snakemake.wildcards.model,
    limit=snakemake.params.limit,
    job=model_job(snakemake),
)
