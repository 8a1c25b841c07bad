"""The intervention registry: one table that every other part of the workflow reads.

An intervention is a way of turning a model into a reward model. Its row says which family it
belongs to (the family decides which rules make its predictions and which module holds its code),
whether it trains on a dataset, what a probe reads (forward stimulus, unit, rule), and its own
default parameters. The config schema's list of names, the rules' wildcard constraints, the probe
methods (`genies.methods.probes.METHODS`), the reward-model methods
(`genies.methods.tuned.reward_model.METHODS`) and the training defaults
(`genies.methods.tuned.training.resolve_params`) are all derived from this table;
`tests/test_interventions.py` checks the schema against it.

Adding an intervention of an existing family is one row here (README, "Adding an
intervention"). The reward models a user brings (docs/reward_models.md) are rows too, made from
their config entries (`configured`): a name the user chooses, with `kind: reward_model` (a
sequence classifier) or `kind: dpo` (a DPO policy and its reference), both families in
`FAMILY_RULES`. This module imports nothing heavy: the Snakefile reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

#: Family -> the Snakemake rules that make its predictions, in DAG order.
FAMILY_RULES = MappingProxyType(
    {
        "logprob": ("forward", "predict_zero_shot"),
        "random": ("predict_random",),
        "few_shot": ("few_shot_prompts", "score_few_shot", "predict_few_shot"),
        "probe": ("forward", "fit_probe", "predict_probe"),
        "tuned": ("tune",),  # trains, then predicts every dataset it is evaluated on
        # reward models of the user's own, made from config entries (CONFIG_FAMILIES)
        "reward_model": ("score_reward_model", "predict_reward_model"),
        "dpo": ("forward", "predict_dpo"),
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
    # Reward models of the user's own: the run model whose row shows them (its zero-shot
    # baseline and capability make their DE), and the registry models they read.
    base: str | None = None
    reads: tuple[str, ...] = ()

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
                {"n_shots": 4},  # as the published runs
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
                defaults={"layer": -1},  # the forward job stores only this yes/no layer
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


#: Family -> (summary, defaults) of the rows made from config entries with `kind: <family>`.
CONFIG_FAMILIES = MappingProxyType(
    {
        "reward_model": (
            "a sequence-classification reward model of your own, scored on prompt + response",
            {},
        ),
        "dpo": (
            "a DPO policy's implicit reward beta * (log pi - log pi_ref), from forward log-probs",
            {"beta": 0.1},
        ),
    }
)


def configured(config: dict) -> dict[str, Intervention]:
    """The rows of the configured interventions, in config order: the registry's row of a
    built-in name, and a row made from the entry of a reward model of the user's own.

    Raises ConfigError when such an entry names a model that is not in the registry, or its
    base run model cannot be decided.
    """
    rows = {
        name: REGISTRY[name] if name in REGISTRY else _own_row(name, params or {}, config)
        for name, params in config["interventions"].items()
    }
    own = [c for c in config.get("capability_interventions", ()) if c in rows and rows[c].base]
    if own:
        from genies.errors import ConfigError

        raise ConfigError(
            f"capability_interventions names {own}, reward models of your own: the capability "
            "is the accuracy of an intervention trained on the target's reference, which they "
            "are not; name built-in interventions (e.g. lora, mms, lat1)"
        )
    return rows


def _own_row(name: str, params: dict, config: dict) -> Intervention:
    from genies.errors import ConfigError

    kind = params.get("kind")
    if kind not in CONFIG_FAMILIES:
        raise ConfigError(
            f"intervention {name!r} is not built in ({', '.join(REGISTRY)}); a reward model of "
            f"your own needs `kind:` one of {', '.join(CONFIG_FAMILIES)} (docs/reward_models.md)"
        )
    models, run_models = config["models"], list(config["run_models"])
    reads = (params.get("model"),) if kind == "reward_model" else (
        params.get("policy"),
        params.get("reference"),
    )  # fmt: skip
    for model in reads:
        if model not in models:
            raise ConfigError(
                f"intervention {name!r} reads model {model!r}, which is not in the model "
                f"registry (`models:`, known: {', '.join(models)}); add an entry for it (a "
                "Hub model: `source: hf`, `repo: ...`; a local Hugging Face directory: "
                "`source: local`, `path: ...`)"
            )
    if kind == "reward_model" and reads[0] in run_models:
        raise ConfigError(
            f"intervention {name!r} reads {reads[0]!r} as a sequence-classification reward "
            "model, which run_models also names as a causal language model; a model is one or "
            "the other (the run model whose row shows the reward model is its `base:`)"
        )
    if kind == "dpo":
        if reads[0] == reads[1]:
            raise ConfigError(f"intervention {name!r}: policy and reference are the same model")
        templated = {m: bool(models[m].get("chat_template", False)) for m in reads}
        if len(set(templated.values())) > 1:
            raise ConfigError(
                f"intervention {name!r}: the policy and the reference must read the same texts, "
                f"but only one asks for its chat template ({templated}); set `chat_template` "
                "alike in both registry entries"
            )
    # default base: a DPO policy's reference (the model it was tuned from), a sequence
    # classifier's only run model
    base = params.get("base", reads[1] if kind == "dpo" else None)
    if base is None:
        if len(run_models) != 1:
            raise ConfigError(
                f"intervention {name!r}: set `base:` to the run model whose row shows it (its "
                f"zero-shot baseline and target-tuned capability make the DE); run_models: "
                f"{', '.join(run_models)}"
            )
        base = run_models[0]
    if base not in run_models:
        raise ConfigError(
            f"intervention {name!r}: its base {base!r} is not in run_models "
            f"({', '.join(run_models)}): its row needs that model's zero-shot baseline and "
            "capability; add it to run_models or set `base:` to a run model"
        )
    summary, defaults = CONFIG_FAMILIES[kind]
    return Intervention(
        name,
        kind,
        summary,
        trains=False,
        defaults=MappingProxyType(defaults),
        base=base,
        reads=tuple(reads),
    )
