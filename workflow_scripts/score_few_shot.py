"""Snakemake entry point: score the few-shot prompts of every source of an eval dataset."""

from genies.forward.job import run_few_shot_scores
from genies.pipeline.jobs import log_file_of, model_job, setup_logging

setup_logging(log_file_of(snakemake))
run_few_shot_scores(
    prompt_files=dict(zip(snakemake.params.sources, snakemake.input.prompts, strict=True)),
    model_dir=snakemake.input.model,
    scores_path=snakemake.output[0],
    model_name=snakemake.wildcards.model,
    eval_dataset=snakemake.wildcards.eval,
    scoring=snakemake.params.scoring,
    job=model_job(snakemake),
)
