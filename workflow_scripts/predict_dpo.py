"""Snakemake entry point: per-pair predictions of a DPO policy's implicit reward."""

from genies.methods.own_reward_models import write_dpo_predictions
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
write_dpo_predictions(
    data_file=snakemake.input.data,
    policy_file=snakemake.input.policy,
    reference_file=snakemake.input.reference,
    out_path=snakemake.output[0],
    model=snakemake.wildcards.model,
    intervention=snakemake.wildcards.intervention,
    eval_dataset=snakemake.wildcards.eval,
    beta=snakemake.params.beta,
)
