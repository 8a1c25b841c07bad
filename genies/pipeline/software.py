"""The package versions each job's numbers depend on, as a rule param: an upgrade reruns them.

Snakemake's `software-env` rerun trigger sees only conda environments, containers and
environment modules. This workflow runs every job in the Python environment Snakemake runs in
(.venv), where that trigger sees nothing: upgrading torch would rerun no job. So each rule
whose outputs a package changes has a `versions` param, the installed versions of exactly
those packages (`job_versions`), read once when Snakemake starts; a changed version is a
changed param, and the `params` trigger reruns those jobs and what reads their outputs.

What changes which numbers (RULE_PACKAGES): torch, transformers and tokenizers change every
job that runs a model (its kernels, the model code, the tokens) and the preparation of a model
(weights converted or re-saved, tokenizer files written); peft changes the trained reward
models; torch also changes the probe fits and their predictions (calibration and CCS are
fitted and applied with torch). gguf changes the weights of a GGUF source, bitsandbytes a
4-bit (QLoRA) training. A linked model is only validated, never re-saved: nothing. Packages
no rule lists (numpy, pyarrow, duckdb, pandas, ...) rerun nothing when upgraded; the
aggregation that computes the intervals is seconds: `--forcerun aggregate`.
"""

from __future__ import annotations

import functools

from genies.io import package_versions

MODEL_RUN_PACKAGES = ("torch", "transformers", "tokenizers")
RULE_PACKAGES = {
    "prepare_model": MODEL_RUN_PACKAGES,
    "forward": MODEL_RUN_PACKAGES,
    "score_few_shot": MODEL_RUN_PACKAGES,
    "score_reward_model": MODEL_RUN_PACKAGES,
    "tune": (*MODEL_RUN_PACKAGES, "peft"),
    "fit_probe": ("torch",),
    "predict_probe": ("torch",),
}
# Packages a model source adds to its preparation, and a training's quantization to it.
SOURCE_PACKAGES = {"smollm2": ("gguf",)}
QUANTIZATION_PACKAGES = {"nf4": ("bitsandbytes",)}


@functools.cache
def installed(packages: tuple[str, ...]) -> dict:
    """Installed version of each package (None when absent), read once per process."""
    return package_versions(packages)


def job_versions(rule: str, spec: dict | None = None, params: dict | None = None) -> dict:
    """The `versions` param of a job of `rule`: package -> installed version.

    `spec`: the registry entry of the model a `prepare_model` job prepares (its source may add
    packages; a linked model needs none); `params`: a `tune` job's method parameters (its
    quantization may add packages).
    """
    if rule not in RULE_PACKAGES:
        raise ValueError(f"no versions for rule {rule!r}; known: {', '.join(RULE_PACKAGES)}")
    packages = RULE_PACKAGES[rule]
    if spec is not None:
        if spec.get("link", False):
            return {}
        packages += SOURCE_PACKAGES.get(spec.get("source"), ())
    if params is not None:
        packages += QUANTIZATION_PACKAGES.get(params.get("quantization"), ())
    return dict(installed(packages))
