"""Stage 1, the data: raw GENIES folders and archives, their download, validation and
materialisation to Parquet, the shift registry, the texts each stimulus reads, chat templates,
and the per-pair prediction layout every later stage writes.

Imports only the top-level modules (`genies.errors`, `genies.io`, `genies.seeds`,
`genies.progress`); never torch.
"""
