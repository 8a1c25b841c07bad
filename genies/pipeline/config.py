"""Configuration: JSON-schema validation with defaults, plus the checks a schema cannot express."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from genies.data.distributions import check_entry
from genies.errors import ConfigError
from genies.pipeline import interventions

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def check_semantics(config: dict) -> None:
    """Cross-field checks and defaults that depend on other keys.

    Raises ConfigError with a message that says what to change.
    """
    if "capability_interventions" not in config:
        if "lora" not in config["interventions"]:
            # The untuned model's accuracy is no target-tuned capability: DE would divide by it.
            raise ConfigError(
                "capability_interventions is not set and lora is not enabled: name the "
                "interventions whose accuracy on a shift's target_reference, trained there, is "
                "the target-tuned capability (DE divides by the best of them), e.g. "
                "`capability_interventions: [mms, lat1]` (probes) or enable lora (a tuned reward "
                "model, the default then); they must be enabled in `interventions`"
            )
        config["capability_interventions"] = ["lora"]
    unknown = [m for m in config["run_models"] if m not in config["models"]]
    if unknown:
        raise ConfigError(
            f"run_models names {unknown} but the model registry (`models:`) only has "
            f"{sorted(config['models'])}; add a registry entry or fix the name"
        )
    _check_interventions(config)
    for name, spec in config["distributions"].items():
        check_entry(name, spec)


def _check_interventions(config: dict) -> None:
    enabled = config["interventions"]
    if "zero_shot" not in enabled:
        raise ConfigError(
            "interventions must include zero_shot: it is the baseline of differential elicitation"
        )
    missing = [c for c in config["capability_interventions"] if c not in enabled]
    if missing:
        raise ConfigError(
            f"capability_interventions names {missing}, which are not in `interventions`; "
            "enable them or remove them from capability_interventions"
        )
    interventions.configured(config)  # reward models of the user's own: models, base


def check_config(config: dict) -> None:
    """Validate `config` in place: the schema, its defaults filled in, then `check_semantics`.

    The one validation path: the Snakefile calls it on Snakemake's config before any job runs,
    and `validate_config` / `load_config` on a copy.
    """
    validator = _with_defaults(jsonschema.Draft202012Validator)(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.path) or "(top level)"
        raise ConfigError(f"invalid config at {where}: {err.message}")
    check_semantics(config)


def validate_config(config: dict) -> dict:
    """Return a validated copy of `config` with schema defaults filled in."""
    config = copy.deepcopy(config)
    check_config(config)
    return config


def load_config(path) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate_config(config or {})
