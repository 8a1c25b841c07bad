"""Snakemake entry point: write the shift registry (configured shifts and the named sets)."""

from genies.io import RunRecord, write_parquet
from genies.jobs import log_file_of, setup_logging
from genies.shifts import Shift, shifts_table

setup_logging(log_file_of(snakemake))
run = RunRecord("shift_registry")
shifts = [Shift(**s) for s in snakemake.params.shifts]
sets = {name: [Shift(**s) for s in set_] for name, set_ in snakemake.params.sets.items()}
write_parquet(shifts_table(shifts, sets), snakemake.output[0], run.finish())
