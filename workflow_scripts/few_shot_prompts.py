"""Snakemake entry point: eval examples with few-shot prompts from the source's train split."""

from genies.baselines import write_few_shot_examples
from genies.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))  # noqa: F821
write_few_shot_examples(
    snakemake.input.eval,  # noqa: F821
    snakemake.input.source,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    n_shots=snakemake.params.n_shots,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    eval_limit=snakemake.params.eval_limit,  # noqa: F821
    source_limit=snakemake.params.source_limit,  # noqa: F821
)
