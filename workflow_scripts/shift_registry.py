"""Snakemake entry point: write the shift registry (configured shifts and the named sets)."""

from genies.data.shifts import Shift, shifts_table
from genies.io import RunRecord, write_parquet
from genies.pipeline.jobs import log_file_of, setup_logging

setup_logging(log_file_of(snakemake))
run = RunRecord("shift_registry")
shifts = [Shift(**s) for s in snakemake.params.shifts]
sets = {name: [Shift(**s) for s in set_] for name, set_ in snakemake.params.sets.items()}
write_parquet(shifts_table(shifts, sets), snakemake.output[0], run.finish())
