"""The package versions genies needs, checked where a model is loaded.

The floors are genies' own declared dependencies (pyproject.toml): read from the installed
distribution's metadata (`importlib.metadata.requires`), or from the pyproject.toml of the
checkout the package sits in when genies is not installed (a job started by a Snakemake of
another environment imports it through the workflow_scripts/genies link). An older package
fails at load with its name and the pip command that upgrades it, instead of an obscure error
later: the scorer passes a 2-D boolean ``logits_to_keep`` (transformers 5.21), transformers
5.21 turns torch below 2.6 off, device maps need accelerate, LoRA needs a peft that imports
with transformers 5 (0.18).
"""

from __future__ import annotations

import importlib.metadata
import logging
from functools import lru_cache
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from genies.errors import GeniesError

log = logging.getLogger(__name__)

DISTRIBUTION = "genies"
#: What loading a model imports, checked by `genies.models.loading.load_model`.
MODEL_PACKAGES = ("torch", "transformers", "accelerate", "tokenizers", "safetensors")


class VersionError(GeniesError, ImportError):
    """An installed package is older than genies declares it needs (or missing)."""


@lru_cache(maxsize=1)
def declared() -> dict[str, Requirement]:
    """Package name -> genies' requirement of it (unconditional ones: no extras, no markers)."""
    try:
        lines = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        lines = _pyproject_dependencies()
    found = {}
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is None:
            found[_normalise(requirement.name)] = requirement
    return found


def _pyproject_dependencies() -> list[str]:
    path = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        import tomllib
    except ImportError:  # Python 3.10 without an install of genies: nothing to read
        return []
    try:
        project = tomllib.loads(path.read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return []
    return project.get("dependencies", []) if project.get("name") == DISTRIBUTION else []


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed(package: str) -> Version | None:
    """The installed release of `package` (local and dev parts dropped), or None."""
    try:
        return Version(Version(importlib.metadata.version(package)).base_version)
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return None


def check_versions(packages=MODEL_PACKAGES, requirements: dict | None = None) -> None:
    """Raise `VersionError` naming every package of `packages` that is missing or outside
    genies' requirement of it (`declared`, or `requirements`), with the pip command."""
    requirements = declared() if requirements is None else requirements
    problems, pins = [], []
    for package in packages:
        requirement = requirements.get(_normalise(package))
        if requirement is None or not requirement.specifier:
            continue
        have = installed(package)
        if have is not None and requirement.specifier.contains(have, prereleases=True):
            continue
        pins.append(f"'{requirement}'")
        if have is None:
            problems.append(f"{package} is not installed (genies needs {requirement})")
        else:
            problems.append(f"{package} {have} is installed, but genies needs {requirement}")
    if problems:
        raise VersionError(
            "; ".join(problems) + f". Upgrade: pip install --upgrade {' '.join(pins)}"
        )
