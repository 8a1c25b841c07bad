"""The declared package floors (pyproject.toml) and the check at model load (genies.versions)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from genies import versions
from genies.models.loading import load_model
from genies.models.prepare import prepare_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_floors():
    versions.declared.cache_clear()
    yield
    versions.declared.cache_clear()


@pytest.fixture
def installed_as(monkeypatch):
    """Pretend `package` is installed at `version` (None: not installed)."""
    real = importlib.metadata.version
    fake = {}

    def version(name):
        if name in fake:
            if fake[name] is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return fake[name]
        return real(name)

    monkeypatch.setattr(versions.importlib.metadata, "version", version)
    return fake.__setitem__


def pyproject_dependencies() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def test_the_floors_are_the_declared_dependencies():
    """One source: the installed metadata says what pyproject.toml says (after `bash setup.sh`)."""
    floors = {name: str(req.specifier) for name, req in versions.declared().items()}
    assert floors["transformers"] == "<6,>=5.21" and floors["torch"] == ">=2.6"
    assert floors["accelerate"] == ">=1.1" and floors["peft"] == ">=0.18"
    assert floors["tokenizers"] == ">=0.23.1" and floors["safetensors"] == ">=0.8"
    assert floors["huggingface-hub"] == ">=1.31"
    declared = {versions._normalise(Requirement(d).name) for d in pyproject_dependencies()}
    assert declared == set(versions.declared()), "reinstall genies (bash setup.sh)"
    versions.check_versions((*versions.MODEL_PACKAGES, "peft"))  # this environment passes


def test_without_an_install_the_checkouts_pyproject_is_read(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(versions.importlib.metadata, "requires", not_installed)
    assert str(versions.declared()["transformers"].specifier) == "<6,>=5.21"


@pytest.mark.parametrize(
    ("package", "version", "ok"),
    [
        ("transformers", "5.20.2", False),  # no 2-D boolean logits_to_keep
        ("transformers", "5.21.0", True),
        ("transformers", "5.26.0.dev0", True),  # a development build counts as its release
        ("transformers", "6.0.0", False),
        ("torch", "2.5.1+cu121", False),
        ("torch", "2.6.0+cu124", True),
        ("accelerate", "1.0.1", False),
        ("accelerate", None, False),
    ],
)
def test_a_package_outside_its_floor_is_named_with_the_fix(installed_as, package, version, ok):
    installed_as(package, version)
    if ok:
        versions.check_versions((package,))
        return
    with pytest.raises(versions.VersionError) as error:
        versions.check_versions(("tokenizers", package))
    text = str(error.value)
    requirement = versions.declared()[package]
    what = "is not installed" if version is None else f"{package} {version.split('+')[0]}"
    assert what in text and f"genies needs {requirement}" in text, text
    assert text.endswith(f"Upgrade: pip install --upgrade '{requirement}'"), text
    assert "tokenizers" not in text  # only what is wrong


def test_load_model_stops_on_an_old_package_before_loading(tmp_path, installed_as):
    prepare_model({"source": "tiny", "seed": 0}, tmp_path / "tiny")
    load_model(tmp_path / "tiny", device="cpu", dtype="float32")
    installed_as("transformers", "5.20.2")
    with pytest.raises(versions.VersionError, match=r"transformers 5\.20\.2 is installed"):
        load_model(tmp_path / "tiny", device="cpu", dtype="float32")
    installed_as("transformers", "5.25.0")
    installed_as("bitsandbytes", "0.49.0")  # checked only when a 4-bit model is asked for
    load_model(tmp_path / "tiny", device="cpu", dtype="float32")
    with pytest.raises(versions.VersionError, match="bitsandbytes 0.49.0"):
        load_model(tmp_path / "tiny", device="cpu", dtype="float32", quantization="nf4")
