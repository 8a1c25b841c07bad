"""The intervention registry: one table that every other part of the workflow reads.

An intervention is a way of turning a model into a reward model. Its row says which family it
belongs to (the family decides which rules make its predictions and which module holds its code),
whether it trains on a dataset, what a probe reads (forward stimulus, unit, rule), and the
parameters it takes: for each its default, type and range (`Param`). The config schema's list of
names, the rules' wildcard constraints, the probe methods (`genies.methods.probes.METHODS`), the
reward-model methods (`genies.methods.tuned.reward_model.METHODS`) and every parameter's default
and check (`resolved_params`: the config check before any job, `genies.methods.probes.method_params`
and `genies.methods.tuned.training.resolve_params` in the jobs) are all derived from this table;
`tests/test_interventions.py` checks the schema against it.

Adding an intervention of an existing family is one row here (README, "Adding an
intervention"). The reward models a user brings (docs/reward_models.md) are rows too, made from
their config entries (`configured`): a name the user chooses, with `kind: reward_model` (a
sequence classifier) or `kind: dpo` (a DPO policy and its reference), both families in
`FAMILY_RULES`. This module imports nothing heavy: the Snakefile reads it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from genies.errors import ConfigError

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


#: The value types a parameter may declare, as the config check names them.
TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "string": "a string",
    "strings": "a list of strings",
    "null": "null",
}


@dataclass(frozen=True)
class Param:
    """One parameter of an intervention: its default and the values it accepts.

    A value is accepted when it is one of `choices`, or of one of `types` and inside the
    bounds (`minimum`/`maximum` inclusive, `above`/`below` exclusive; numbers only) and, for a
    string, matching `pattern`. The config check (before any job) and the jobs read this one
    declaration.
    """

    default: object
    types: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple = ()
    pattern: str | None = None
    doc: str = ""

    def __post_init__(self):
        assert set(self.types) <= set(TYPE_NAMES), self.types
        assert self.accepts(self.default), f"default {self.default!r} is not allowed"

    def accepts(self, value) -> bool:
        if any(_same(value, choice) for choice in self.choices):
            return True
        return any(self._of_type(value, t) for t in self.types)

    def _of_type(self, value, kind: str) -> bool:
        if kind == "null":
            return value is None
        if kind == "boolean":
            return isinstance(value, bool)
        if kind == "strings":
            return isinstance(value, list) and all(isinstance(v, str) and v for v in value)
        if kind == "string":
            return isinstance(value, str) and (
                self.pattern is None or re.fullmatch(self.pattern, value) is not None
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if kind == "integer" and not isinstance(value, int):
            return False
        return math.isfinite(value) and self._in_range(value)

    def _in_range(self, x) -> bool:
        return (
            (self.minimum is None or x >= self.minimum)
            and (self.maximum is None or x <= self.maximum)
            and (self.above is None or x > self.above)
            and (self.below is None or x < self.below)
        )

    def allowed(self) -> str:
        """What this parameter takes, in words: "an integer >= 1", "one of 'mixed', ..."."""
        parts = [", ".join(_show(c) for c in self.choices)] if self.choices else []
        for kind in self.types:
            text = TYPE_NAMES[kind]
            if kind in ("integer", "number"):
                text += self._range_text()
            elif kind == "string" and self.pattern:
                text += f" matching {self.pattern}"
            parts.append(text)
        joined = " or ".join(parts)
        return f"one of {joined}" if self.choices and not self.types else joined

    def _range_text(self) -> str:
        bounds = [
            f"{sign} {_show(bound)}"
            for sign, bound in (
                (">=", self.minimum),
                (">", self.above),
                ("<=", self.maximum),
                ("<", self.below),
            )
            if bound is not None
        ]
        return " " + " and ".join(bounds) if bounds else ""


def _same(value, choice) -> bool:
    # 1 == True in Python: a choice matches only a value of its own type
    return value == choice and type(value) is type(choice)


def _show(value) -> str:
    """A value as the config writes it (YAML): null, true, 1e-05, 'text'."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if isinstance(value, int) else repr(value)


#: Every probe's parameters (genies.methods.probes).
PROBE_PARAMS = {
    "train_fraction": Param(
        0.7, ("number",), above=0, below=1,
        doc="share of the source pairs the directions are fitted on; the rest calibrate",
    ),
    "calibration_l2": Param(
        1.0, ("number",), above=0, doc="L2 penalty of the post-hoc calibration weight"
    ),
}  # fmt: skip
#: The parameters of each probe rule (`Intervention.rule`) besides PROBE_PARAMS.
RULE_PARAMS = {
    "mean_difference": {
        "n_units": Param(
            16, ("integer",), minimum=1,
            doc="units (heads or layers) kept, the best by validation accuracy; at most all",
        ),
        "probe_c": Param(
            1.0, ("number",), above=0, doc="inverse L2 strength of the per-unit selection probes"
        ),
        "probe_max_iter": Param(100, ("integer",), minimum=1, doc="Newton steps of those probes"),
        "probe_precision": Param(
            "mixed", choices=("mixed", "float64"),
            doc="mixed: float32 steps, float64 gradient and stopping test; float64: all float64",
        ),
    },
    "ccs": {
        "layer": Param(
            -1, ("integer",),
            doc="the layer read; negative counts from the last (the forward job stores only it)",
        ),
        "restarts": Param(10, ("integer",), minimum=1, doc="random initialisations, best kept"),
        "epochs": Param(1000, ("integer",), minimum=1, doc="full-batch AdamW steps per restart"),
        "lr": Param(1e-3, ("number",), above=0, doc="AdamW learning rate"),
        "weight_decay": Param(0.01, ("number",), minimum=0, doc="AdamW weight decay"),
        "centre": Param(
            "source", choices=("source", "eval"),
            doc="centre features on the source train split's means, or on each evaluated set's",
        ),
    },
}  # fmt: skip
#: The trained reward models' parameters (genies.methods.tuned.training).
TRAINING_PARAMS = {
    "steps": Param(100, ("integer",), minimum=1, doc="optimizer steps"),
    "batch_size": Param(32, ("integer",), minimum=1, doc="pairs per step"),
    "micro_batch_size": Param(
        None, ("integer", "null"), minimum=1,
        doc="pairs per forward (gradient accumulation); null: batch_size, or the memory plan's",
    ),
    "lr": Param(2e-4, ("number",), above=0, doc="AdamW learning rate"),
    "max_grad_norm": Param(
        0.3, ("number", "null"), minimum=0, doc="gradient clipping; 0 or null: none"
    ),
    "lora_r": Param(64, ("integer",), minimum=1, doc="LoRA rank"),
    "lora_alpha": Param(16, ("number",), above=0, doc="LoRA scaling numerator"),
    "lora_dropout": Param(0.1, ("number",), minimum=0, below=1, doc="LoRA dropout"),
    "target_modules": Param(
        None, ("null", "string", "strings"),
        doc="LoRA's modules; null: peft's default for the architecture (Llama: q_proj, v_proj)",
    ),
    "num_virtual_tokens": Param(10, ("integer",), minimum=1, doc="prompt tuning's tokens"),
    "prompt_init": Param(
        "vocab", choices=("vocab", "random"),
        doc="virtual tokens start as sampled vocabulary embeddings, or N(0, 1) as upstream",
    ),
    "max_train_examples": Param(
        None, ("integer", "null"), minimum=1,
        doc="the first N train examples; null: the config's train cap",
    ),
    "val_fraction": Param(
        0.1, ("number",), above=0, below=1, doc="share of examples held out for validation"
    ),
    "checkpoint_every": Param(25, ("integer",), minimum=1, doc="steps between checkpoints"),
    "eval_batch_size": Param(
        32, ("integer",), minimum=1, doc="sequences per forward in validation and prediction"
    ),
    "max_length": Param(
        None, ("integer", "null"), minimum=2, doc="tokens per text; null: no limit"
    ),
    "dtype": Param(
        "auto", choices=("auto", "float32", "bfloat16", "float16"),
        doc="null in the config: the scoring dtype",
    ),
    "quantization": Param(
        None, choices=(None, "none", "nf4"), doc="nf4: the base in 4 bits (QLoRA)"
    ),
    "gradient_checkpointing": Param(
        "auto", choices=(True, False, "auto"), doc="auto: when the memory plan needs it"
    ),
    "device": Param(
        "auto", ("string",), pattern=r"auto|cpu|cuda(:[0-9]+)?",
        doc="unset in the config: the scoring device",
    ),
    "deterministic": Param(
        True, ("boolean",),
        doc="CUDA: deterministic kernels and math attention (genies.methods.tuned.training)",
    ),
    "log_every_s": Param(10.0, ("number",), above=0, doc="seconds between progress lines"),
}  # fmt: skip
#: Few-shot prompting's parameters (genies.forward.baselines).
FEW_SHOT_PARAMS = {
    "n_shots": Param(
        4, ("integer",), minimum=1, maximum=127,
        doc="demonstrations per prompt (as the published runs: 4); counted in an int8",
    ),
}  # fmt: skip


def _with_defaults(params: Mapping[str, Param], defaults: Mapping) -> MappingProxyType:
    unknown = set(defaults) - set(params)
    assert not unknown, f"defaults for undeclared parameters {unknown}"
    return MappingProxyType(
        {k: replace(p, default=defaults[k]) if k in defaults else p for k, p in params.items()}
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
    params: Mapping[str, Param] = field(default_factory=lambda: MappingProxyType({}))
    # Reward models of the user's own: the run model whose row shows them (its zero-shot
    # baseline and capability make their DE), and the registry models they read.
    base: str | None = None
    reads: tuple[str, ...] = ()

    @property
    def rules(self) -> tuple[str, ...]:
        return FAMILY_RULES[self.family]

    @property
    def defaults(self) -> dict:
        """Every parameter's default."""
        return {k: p.default for k, p in self.params.items()}


def _family_params(family: str, rule: str | None) -> dict[str, Param]:
    if family == "probe":
        return {**PROBE_PARAMS, **RULE_PARAMS[rule]}
    return {"tuned": TRAINING_PARAMS, "few_shot": FEW_SHOT_PARAMS}.get(family, {})


def _row(name, family, summary, defaults=None, **kw) -> tuple[str, Intervention]:
    """A registry row: its family's parameters (`defaults` overrides some of their defaults)."""
    params = _with_defaults(_family_params(family, kw.get("rule")), defaults or {})
    return name, Intervention(name, family, summary, params=params, **kw)


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


@dataclass(frozen=True)
class ConfigFamily:
    """A family of rows made from config entries with `kind: <family>`: the keys that say which
    models it reads and shows on (the config schema types them), and its parameters."""

    summary: str
    keys: tuple[str, ...]
    params: Mapping[str, Param] = field(default_factory=lambda: MappingProxyType({}))


CONFIG_FAMILIES = MappingProxyType(
    {
        "reward_model": ConfigFamily(
            "a sequence-classification reward model of your own, scored on prompt + response",
            ("kind", "model", "base"),
        ),
        "dpo": ConfigFamily(
            "a DPO policy's implicit reward beta * (log pi - log pi_ref), from forward log-probs",
            ("kind", "policy", "reference", "base"),
            MappingProxyType(
                {
                    "beta": Param(
                        0.1,
                        ("number",),
                        above=0,
                        doc="the DPO beta the policy was trained with; scales the rewards",
                    )
                }
            ),  # fmt: skip
        ),
    }
)


def resolved_params(name: str, given: Mapping | None = None, entry: Intervention | None = None):
    """The parameters of intervention `name`: its row's defaults overridden by `given`.

    Raises ConfigError, naming the key, the entry and what it takes, for a key the row does
    not declare or a value outside its declared type and range. `entry`: a row made from the
    config (`configured`) instead of the registry's; its model keys pass through.
    """
    entry = entry or get(name)
    given = dict(given or {})
    passing = CONFIG_FAMILIES[entry.family].keys if entry.family in CONFIG_FAMILIES else ()
    where = f"interventions/{name}"
    unknown = [k for k in given if k not in entry.params and k not in passing]
    if unknown:
        takes = ", ".join(sorted([*passing, *entry.params])) or "no parameters"
        hint = " (its seed is the config's `seed`)" if entry.family == "random" else ""
        raise ConfigError(f"{where}: unknown parameter {unknown[0]!r}; {name} takes {takes}{hint}")
    for key, value in given.items():
        param = entry.params.get(key)
        if param is not None and not param.accepts(value):
            raise ConfigError(
                f"{where}/{key}: {_show(value)} is not allowed; {key} takes {param.allowed()} "
                f"(default {_show(param.default)}: {param.doc}){_yaml_hint(value)}"
            )
    return {**entry.defaults, **given}


def _yaml_hint(value) -> str:
    """Why a number may have arrived as a string."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    if re.fullmatch(r"[+-]?[0-9]+[eE][+-]?[0-9]+", value.strip()):
        return "; YAML reads 1e-3 as a string: write 1.0e-3"
    return "; it is a string: write the number without quotes"


def configured(config: dict) -> dict[str, Intervention]:
    """The rows of the configured interventions, in config order: the registry's row of a
    built-in name, and a row made from the entry of a reward model of the user's own.

    Raises ConfigError when an entry has a parameter its row does not declare or a value
    outside its range (`resolved_params`), names a model that is not in the registry, or its
    base run model cannot be decided.
    """
    rows = {
        name: REGISTRY[name] if name in REGISTRY else _own_row(name, params or {}, config)
        for name, params in config["interventions"].items()
    }
    for name, row in rows.items():
        resolved_params(name, config["interventions"][name], row)
    own = [c for c in config.get("capability_interventions", ()) if c in rows and rows[c].base]
    if own:
        raise ConfigError(
            f"capability_interventions names {own}, reward models of your own: the capability "
            "is the accuracy of an intervention trained on the target's reference, which they "
            "are not; name built-in interventions (e.g. lora, mms, lat1)"
        )
    return rows


def _own_row(name: str, params: dict, config: dict) -> Intervention:
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
    family = CONFIG_FAMILIES[kind]
    return Intervention(
        name,
        kind,
        family.summary,
        trains=False,
        params=family.params,
        base=base,
        reads=tuple(reads),
    )
