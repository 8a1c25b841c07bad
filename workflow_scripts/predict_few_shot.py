"""Snakemake entry point: few-shot predictions of one source from the eval dataset's scores."""

from genies.forward.zero_shot import write_zero_shot_predictions
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
write_zero_shot_predictions(
    data_file=snakemake.input.prompts,
    forward_file=snakemake.input.scores,
    out_path=snakemake.output[0],
    model=snakemake.wildcards.model,
    eval_dataset=snakemake.wildcards.eval,
    normalisation=snakemake.params.normalisation,
    intervention="few_shot",
    train=snakemake.wildcards.train,
)
