"""Snakemake entry point: eval examples with few-shot prompts from the source's train split."""

from genies.forward.baselines import write_few_shot_examples
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
write_few_shot_examples(
    snakemake.input.eval,
    snakemake.input.source,
    snakemake.output[0],
    n_shots=snakemake.params.n_shots,
    seed=snakemake.params.seed,
    eval_limit=snakemake.params.eval_limit,
    source_limit=snakemake.params.source_limit,
)
