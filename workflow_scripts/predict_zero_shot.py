"""Snakemake entry point: per-pair zero-shot predictions from cached forward scores."""

from genies.jobs import log_file_of, setup_logging
from genies.zero_shot import write_zero_shot_predictions

setup_logging(log_file_of(snakemake))  # noqa: F821
write_zero_shot_predictions(
    data_file=snakemake.input.data,  # noqa: F821
    forward_file=snakemake.input.forward,  # noqa: F821
    out_path=snakemake.output[0],  # noqa: F821
    model=snakemake.wildcards.model,  # noqa: F821
    eval_dataset=snakemake.wildcards.eval,  # noqa: F821
    normalisation=snakemake.params.normalisation,  # noqa: F821
)
