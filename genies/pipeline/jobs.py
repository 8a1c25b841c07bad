"""Helpers for the thin Snakemake entry points in workflow_scripts/."""

from __future__ import annotations

import logging
import sys


def setup_logging(log_file=None, echo: bool = False) -> logging.Logger:
    """Send log records (and stray stderr) to the job's log file, with timestamps; with
    `echo`, log records also go to the console (for a job run on the submit host)."""
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        stream = open(log_file, "a", buffering=1)  # noqa: SIM115 - lives for the job
        sys.stderr = stream
        handlers = [logging.StreamHandler(stream)]
        if echo:
            handlers.append(logging.StreamHandler(sys.__stderr__))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    return logging.getLogger("genies")


def log_file_of(snakemake) -> str | None:
    return snakemake.log[0] if len(snakemake.log) else None


def model_job(snakemake) -> dict:
    """How a model job runs (`genies.pipeline.defaults.JOB_DEFAULTS`): its threads, GPUs and retry
    attempt from Snakemake, the context policy from its params, the memory settings and the
    scratch folder from the config (not params: they change where and in what batches the job
    works, not its results, and rerun nothing)."""
    return {
        "threads": snakemake.threads,
        "gpus": int(getattr(snakemake.resources, "gpu", 1)),
        "attempt": int(getattr(snakemake.resources, "attempt", 1)),
        "memory": snakemake.config.get("memory"),
        "context_policy": snakemake.params.context_policy,
        "scratch_dir": snakemake.config.get("scratch_dir"),
    }
