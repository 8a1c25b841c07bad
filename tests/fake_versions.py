"""Run Snakemake as if some packages had other versions: a simulated upgrade, without one.

    python tests/fake_versions.py '{"torch": "99.0"}' <snakemake arguments>

`importlib.metadata.version` answers the given versions for those packages (the installed
ones for every other), in this process only: the versions Snakemake's DAG sees
(`genies.pipeline.software`), as after an upgrade of the environment.
"""

import importlib.metadata
import json
import runpy
import sys

fake = json.loads(sys.argv.pop(1))
installed = importlib.metadata.version
importlib.metadata.version = lambda name: fake[name] if name in fake else installed(name)
sys.argv[0] = "snakemake"
runpy.run_module("snakemake", run_name="__main__", alter_sys=True)
