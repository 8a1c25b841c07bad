"""Snakemake entry point: score few-shot prompts like zero-shot and write the predictions."""

from genies.forward import run_forward
from genies.jobs import log_file_of, setup_logging
from genies.zero_shot import write_zero_shot_predictions

setup_logging(log_file_of(snakemake))
w = snakemake.wildcards
run_forward(
    data_file=snakemake.input.data,
    model_dir=snakemake.input.model,
    out_path=snakemake.output.scores,
    model_name=w.model,
    dataset=w.eval,
    split="test",
    batch_tokens=snakemake.params.batch_tokens,
    device=snakemake.params.device,
    dtype=snakemake.params.dtype,
    threads=snakemake.threads,
)
write_zero_shot_predictions(
    data_file=snakemake.input.data,
    forward_file=snakemake.output.scores,
    out_path=snakemake.output.predictions,
    model=w.model,
    eval_dataset=w.eval,
    normalisation=snakemake.params.normalisation,
    intervention="few_shot",
    train=w.train,
)
