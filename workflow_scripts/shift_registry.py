"""Snakemake entry point: write the selected shifts as a table."""

from genies.io import RunRecord, write_parquet
from genies.jobs import log_file_of, setup_logging
from genies.shifts import Shift, shifts_table

setup_logging(log_file_of(snakemake))
run = RunRecord("shift_registry")
shifts = [Shift(**s) for s in snakemake.params.shifts]
pairs = [tuple(p) for p in snakemake.params.genies_pairs]
write_parquet(shifts_table(shifts, pairs), snakemake.output[0], run.finish())
