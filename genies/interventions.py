"""The intervention registry: one table that every other part of the workflow reads.

An intervention is a way of turning a model into a reward model. Its row says which family it
belongs to (the family decides which rules make its predictions and which module holds its
code), whether it trains on a dataset, what a probe reads (forward stimulus, unit, rule), and
its own default parameters. The config schema's list of names, the rules' wildcard
constraints, the probe methods (`genies.probes.METHODS`), the reward-model methods
(`genies.reward_model.METHODS`) and the training defaults (`genies.training.resolve_params`)
are all derived from this table; `tests/test_interventions.py` checks the schema against it.

Adding an intervention of an existing family is one row here (README, "Adding an
intervention"). This module imports nothing heavy: the Snakefile reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

#: Family -> the Snakemake rules that make its predictions, in DAG order.
FAMILY_RULES = MappingProxyType(
    {
        "logprob": ("forward", "predict_zero_shot"),
        "random": ("predict_random",),
        "few_shot": ("few_shot_prompts", "predict_few_shot"),
        "probe": ("forward", "fit_probe", "predict_probe"),
        "tuned": ("tune", "predict_tuned"),
    }
)


@dataclass(frozen=True)
class Intervention:
    name: str
    family: str  # a key of FAMILY_RULES
    summary: str
    trains: bool = True  # False: its predictions do not depend on a training set (train = none)
    stimulus: str | None = None  # probes: the forward stimulus whose activations it reads
    unit: str | None = None  # probes: "heads" (an attention head) or "resid" (a layer)
    rule: str | None = None  # probes: "mean_difference" or "ccs"
    defaults: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    @property
    def rules(self) -> tuple[str, ...]:
        return FAMILY_RULES[self.family]


def _row(name, family, summary, defaults=None, **kw) -> tuple[str, Intervention]:
    return name, Intervention(
        name, family, summary, defaults=MappingProxyType(defaults or {}), **kw
    )


REGISTRY = MappingProxyType(
    dict(
        [
            _row(
                "zero_shot",
                "logprob",
                "the frozen model's log-probability of each response (the DE baseline)",
                trains=False,
            ),
            _row("random", "random", "probability 0.5, a seeded fair coin per pair", trains=False),
            _row(
                "few_shot",
                "few_shot",
                "seeded source demonstrations before the prompt, then scored like zero-shot",
                {"n_shots": 5},
            ),
            _row(
                "mms",
                "probe",
                "mean-difference directions on attention heads",
                stimulus="plain",
                unit="heads",
                rule="mean_difference",
            ),
            _row(
                "lat1",
                "probe",
                "mean-difference directions on residual-stream layers (stimulus 1: plain)",
                stimulus="plain",
                unit="resid",
                rule="mean_difference",
            ),
            _row(
                "lat2",
                "probe",
                "mean-difference directions on layers, LAT stimulus-2 template",
                stimulus="lat2",
                unit="resid",
                rule="mean_difference",
            ),
            _row(
                "cra",
                "probe",
                "yes-minus-no contrast directions on attention heads",
                stimulus="yesno",
                unit="heads",
                rule="mean_difference",
            ),
            _row(
                "ccs",
                "probe",
                "unsupervised contrast-consistent probe on one layer, sign chosen on the source",
                stimulus="yesno",
                unit="resid",
                rule="ccs",
            ),
            _row("lora", "tuned", "LoRA / QLoRA reward model (scalar head)"),
            _row(
                "prompt_tuning",
                "tuned",
                "learned virtual tokens + scalar head",
                {"lr": 0.0052},
            ),
        ]
    )
)

#: The intervention whose train = none accuracy on the target is every cell's baseline.
BASELINE = "zero_shot"


def get(name: str) -> Intervention:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown intervention {name!r}; known: {', '.join(REGISTRY)}") from None


def of_family(family: str, names=None) -> list[str]:
    """Registry names of `family` (among `names` when given, in their order)."""
    if family not in FAMILY_RULES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILY_RULES)}")
    names = REGISTRY if names is None else names
    return [n for n in names if get(n).family == family]


def untrained() -> tuple[str, ...]:
    return tuple(n for n, entry in REGISTRY.items() if not entry.trains)
