"""Helpers for the thin Snakemake entry points in workflow_scripts/."""

from __future__ import annotations

import logging
import sys


def setup_logging(log_file=None) -> logging.Logger:
    """Send log records (and stray stderr) to the job's log file, with timestamps."""
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        stream = open(log_file, "a", buffering=1)  # noqa: SIM115 - lives for the job
        sys.stderr = stream
        handlers = [logging.StreamHandler(stream)]
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    return logging.getLogger("genies")


def log_file_of(snakemake) -> str | None:
    return snakemake.log[0] if len(snakemake.log) else None
