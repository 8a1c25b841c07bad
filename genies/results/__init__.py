"""Stage 5, the results: cells and their metrics, the prompt bootstrap, results.duckdb, the
paper's published runs, the GENIES table reports and the per-example viewer.

Imports `genies.pipeline`, `genies.data` and the top-level modules; never torch.
"""
