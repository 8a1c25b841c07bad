"""Snakemake's linter finds nothing in the workflow but the one lint it answers by design.

`snakemake --lint` asks every rule for a conda environment or a container. The rules have
neither: every job runs in the environment Snakemake runs in, `.venv`, set up from the tested
versions in requirements.lock (README, "Dependencies"); conda could not be tested where this
workflow is developed. Any other lint fails this test, which runs in every test run (and so in
CI) in place of a bare `snakemake --lint`, which would always exit 1.
"""

from __future__ import annotations

import re

from .fixtures import make_genies_folder, workflow_config
from .workflow import snakemake, write_config

BY_DESIGN = "Specify a conda environment or container for each rule."


def test_snakemake_lints_nothing_but_the_missing_conda_environments(tmp_path):
    write_config(tmp_path, workflow_config(make_genies_folder(tmp_path / "data")))
    proc = snakemake(tmp_path, "genies_table", "--lint", check=False)
    output = proc.stdout + proc.stderr
    linted = re.findall(r"^Lints for (.+?):$", output, flags=re.M)
    titles = set(re.findall(r"^    \* (.+):$", output, flags=re.M))
    assert titles == {BY_DESIGN}, output
    # one lint per rule, each about its rule: none about a Snakefile
    assert linted and all(item.startswith("rule ") for item in linted), linted
