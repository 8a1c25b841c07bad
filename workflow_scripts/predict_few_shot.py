"""Snakemake entry point: score few-shot prompts like zero-shot and write the predictions."""

from genies.forward import run_forward
from genies.jobs import log_file_of, setup_logging
from genies.zero_shot import write_zero_shot_predictions

setup_logging(log_file_of(snakemake))  # noqa: F821
w = snakemake.wildcards  # noqa: F821
run_forward(
    data_file=snakemake.input.data,  # noqa: F821
    model_dir=snakemake.input.model,  # noqa: F821
    out_path=snakemake.output.scores,  # noqa: F821
    model_name=w.model,
    dataset=w.eval,
    split="test",
    batch_tokens=snakemake.params.batch_tokens,  # noqa: F821
    device=snakemake.params.device,  # noqa: F821
    dtype=snakemake.params.dtype,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
write_zero_shot_predictions(
    data_file=snakemake.input.data,  # noqa: F821
    forward_file=snakemake.output.scores,  # noqa: F821
    out_path=snakemake.output.predictions,  # noqa: F821
    model=w.model,
    eval_dataset=w.eval,
    normalisation=snakemake.params.normalisation,  # noqa: F821
    intervention="few_shot",
    train=w.train,
)
