"""GENIES: reward-model generalisation benchmark, as an importable library.

The Snakemake workflow (Snakefile, rules/, workflow_scripts/) only wires files to the
functions in this package; everything here is testable without Snakemake.
"""

__version__ = "0.1.0"
