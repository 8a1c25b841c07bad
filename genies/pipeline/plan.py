"""Turn a validated config into the set of result paths the workflow must build.

The Snakefile asks this module which datasets, models and predictions exist; it never reads
data itself. Path templates live here so the rules and the aggregation agree on them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from genies.data.distributions import input_files, source_of
from genies.data.download import missing_data_message
from genies.data.raw import RawData, split_path
from genies.data.shifts import Shift, datasets_of, load_shifts, shift_sets
from genies.errors import ConfigError
from genies.pipeline import interventions as registry
from genies.pipeline.interventions import BASELINE

log = logging.getLogger(__name__)

# Path templates: the rules and the aggregation both read them from here.
DATA = "results/data/{dataset}/{split}.parquet"
# What a distribution of the user's own reads: its Hub commit or its files' sha256.
DISTRIBUTION_PIN = "results/data/{dataset}/source.json"
# Where `snakemake download_data` puts the upstream archive when `data_dir` is missing.
DOWNLOADED_DATA = "resources/genies-datasets.tar"
SHIFTS = "results/shifts.parquet"
MODEL_DIR = "resources/models/{model}"
# One forward job per (model, dataset): scores of every split and stimulus it needs, and the
# activations the configured probes read (tensors "<split>/<stimulus>/<kind>").
FORWARD_SCORES = "results/forward/{model}/{dataset}.parquet"
FORWARD_ACTIVATIONS = "results/forward/{model}/{dataset}.safetensors"
FEW_SHOT_PROMPTS = "results/few_shot_prompts/{train}/{eval}.parquet"
# One few-shot scoring job per (model, eval dataset), covering every source it is paired with.
FEW_SHOT_SCORES = "results/few_shot_scores/{model}/{eval}.parquet"
# A sequence-classification reward model's rewards of a dataset's test responses (one GPU job
# per reward model and dataset; genies.methods.own_reward_models).
REWARD_SCORES = "results/reward_scores/{model}/{dataset}.parquet"
FIT_TENSORS = "results/fit/{model}/{intervention}/{train}.safetensors"
FIT_INFO = "results/fit/{model}/{intervention}/{train}.json"
ADAPTER = "results/tune/{model}/{intervention}/{train}"
PREDICTION = "results/predictions/{model}/{intervention}/{train}/{eval}.parquet"
# A trained reward model's job predicts every dataset it is evaluated on, into one file.
TUNED_PREDICTIONS = "results/predictions/{model}/{intervention}/{train}.parquet"
# The database users open; a copy of BUILT_DATABASE swapped in by rule publish_database
# (genies.results.database), so that it is there, whole, while the next one is built.
DATABASE = "results/results.duckdb"
# The aggregation's output, which the jobs read (report_tables, viewer); never open it yourself.
BUILT_DATABASE = "results/database/results.duckdb"
VIEWER = "results/viewer/{model}"  # the per-example HTML viewer of a model (genies.results.viewer)
CELL = "results/cells/{model}/{intervention}/{shift}.json"  # the single-cell target

SPLITS = ("train", "test")
NO_TRAIN = "none"

# Interventions whose predictions do not depend on a training dataset (train = none).
UNTRAINED = registry.untrained()

REPORT_DIR = "results/genies_table"
#: Report output name -> path template (the `{model}` wildcard).
REPORT_TEMPLATES = {
    "table_csv": REPORT_DIR + "/{model}.csv",
    "table_md": REPORT_DIR + "/{model}.md",
    "shift_matrix_csv": REPORT_DIR + "/{model}.shift_matrix.csv",
    "shift_matrix_md": REPORT_DIR + "/{model}.shift_matrix.md",
    "de_heatmap": REPORT_DIR + "/{model}.de_heatmap.png",
    "generalization_plot": REPORT_DIR + "/{model}.generalization_vs_zero_shot.png",
    "de_bars": REPORT_DIR + "/{model}.de_bars.png",
    "comparisons_md": REPORT_DIR + "/{model}.comparisons.md",
    "results_json": REPORT_DIR + "/{model}.json",  # the run's results file (genies.results.summary)
}


def prediction_path(model: str, intervention: str, train: str, eval_dataset: str) -> str:
    """The file holding the predictions of (model, intervention, train, eval)."""
    entry = registry.REGISTRY.get(intervention)
    if entry is not None and entry.family == "tuned":
        return TUNED_PREDICTIONS.format(model=model, intervention=intervention, train=train)
    return PREDICTION.format(model=model, intervention=intervention, train=train, eval=eval_dataset)


def cell_inputs(
    model: str,
    intervention: str,
    shift: Shift,
    *,
    capability_interventions: Iterable[str] = ("lora",),
    untrained: Iterable[str] = UNTRAINED,
    baseline: str = BASELINE,
) -> dict[str, list[tuple[str, str, str, str]]]:
    """The (model, intervention, train, eval) groups each input of a cell reads.

    `prediction_path(*key)` of each key is the file (and the Snakemake target) that holds it.
    """
    untrained = set(untrained)

    def key(name, train, eval_dataset):
        return (model, name, NO_TRAIN if name in untrained else train, eval_dataset)

    ref = shift.target_reference
    return {
        "generalization": [key(intervention, shift.source, shift.target)],
        "source_id": [key(intervention, shift.source, shift.source)],
        "baseline": [(model, baseline, NO_TRAIN, shift.target)],
        "capability": [key(c, ref, ref) for c in capability_interventions],
        # The paper's "ID target accuracy": trained and evaluated on the target reference,
        # which stands in for targets whose own data has spurious cues (alpaca_long, ...).
        "id_target": [key(intervention, ref, ref)],
    }


@dataclasses.dataclass
class Plan:
    config: dict

    @cached_property
    def data_location(self) -> Path | None:
        """Where the GENIES data is: `data_dir`, else the archive `snakemake download_data`
        fetched (DOWNLOADED_DATA), else None (nothing yet)."""
        for place in (Path(self.config["data_dir"]), Path(DOWNLOADED_DATA)):
            if place.exists():
                return place
        return None

    @cached_property
    def raw(self) -> RawData:
        return RawData(self.data_location)

    @cached_property
    def data_missing(self) -> bool:
        """No data yet: the plan is empty, so the workflow still parses and `snakemake
        download_data` can fetch it; `require_data` stops every other target."""
        return self.data_location is None

    def require_data(self, wildcards=None) -> list[str]:
        """Input function of the rules every result starts from: no files, or, while the data
        is missing, the error that says how to get it."""
        if self.data_missing:
            raise ConfigError(
                missing_data_message(self.config["data_dir"], self.config.get("data_url"))
            )
        return []

    @cached_property
    def genies_datasets(self) -> list[str]:
        """The datasets of the GENIES data (`data_dir`)."""
        if self.data_missing:
            return []
        names = self.raw.datasets()
        if not names:
            raise ConfigError(
                f"no datasets found in {self.data_location}: expected "
                "distributions/<dataset>/train.json and test.json"
            )
        return names

    @property
    def distributions(self) -> dict[str, dict]:
        """The user's own distributions (`distributions:`), name -> entry."""
        return self.config.get("distributions") or {}

    @cached_property
    def available_datasets(self) -> list[str]:
        """Every dataset a shift may name: the GENIES ones and the user's own distributions."""
        if self.data_missing:
            return []
        clash = sorted(set(self.distributions) & set(self.genies_datasets))
        if clash:
            raise ConfigError(
                f"distributions: {', '.join(clash)} is the name of a GENIES dataset; give your "
                "distribution another name (it cannot replace a GENIES dataset)"
            )
        return sorted([*self.genies_datasets, *self.distributions])

    @cached_property
    def shifts(self) -> list[Shift]:
        if self.data_missing:
            return []
        return load_shifts(self.config["shifts"], self.data_location, self.available_datasets)

    @cached_property
    def shift_sets(self) -> dict[str, list[Shift]]:
        """The named shift sets the GENIES table averages over (`genies.data.shifts.shift_sets`)."""
        return {} if self.data_missing else shift_sets(self.data_location)

    @cached_property
    def datasets(self) -> list[str]:
        """Datasets the selected shifts touch (sources, targets, target references)."""
        return datasets_of(self.shifts)

    @property
    def models(self) -> list[str]:
        return list(self.config["run_models"])

    def raw_input(self, dataset: str, split: str) -> str:
        return str(self.raw.local_path(split_path(dataset, split)))

    def distribution_files(self, dataset: str) -> list[str]:
        """The local files a distribution of the user's own reads (none for a Hub dataset)."""
        return input_files(self.distributions[dataset])

    def distribution_source(self, dataset: str) -> dict:
        """The part of a distribution's entry that its pin depends on (`source_of`)."""
        return source_of(self.distributions[dataset])

    def data_file(self, dataset: str, split: str) -> str:
        return DATA.format(dataset=dataset, split=split)

    def data_files(self) -> list[str]:
        return [self.data_file(d, s) for d in self.datasets for s in SPLITS]

    def cap(self, split: str):
        return self.config["caps"][f"{split}_examples"]

    @property
    def interventions(self) -> list[str]:
        return list(self.config["interventions"])

    @cached_property
    def entries(self) -> dict[str, registry.Intervention]:
        """The registry row of every configured intervention (reward models of the user's own
        included: `genies.pipeline.interventions.configured`)."""
        return registry.configured(self.config)

    def of_family(self, family: str) -> list[str]:
        if family not in registry.FAMILY_RULES:
            raise ValueError(
                f"unknown family {family!r}; known: {', '.join(registry.FAMILY_RULES)}"
            )
        return [name for name, entry in self.entries.items() if entry.family == family]

    @cached_property
    def untrained(self) -> tuple[str, ...]:
        """Configured interventions whose predictions do not depend on a training set."""
        return tuple(
            dict.fromkeys([*UNTRAINED, *(n for n, e in self.entries.items() if not e.trains)])
        )

    def models_of(self, intervention: str) -> list[str]:
        """The run models whose rows show `intervention`: its base for a reward model of the
        user's own, every run model otherwise."""
        base = self.entries[intervention].base
        return [base] if base is not None else self.models

    def models_behind(self, model: str) -> list[str]:
        """The registry models whose weights a run model's numbers come from: the model, and
        the reward models and DPO policies and references its interventions read."""
        reads = (
            m
            for name, entry in self.entries.items()
            if model in self.models_of(name)
            for m in entry.reads
        )
        return list(dict.fromkeys([model, *reads]))

    def train_eval_pairs(self, intervention: str) -> list[tuple[str, str]]:
        """(train, eval) pairs a cell needs from `intervention`, in a stable order.

        Every shift needs source -> target, source -> source and target -> target; a
        capability intervention also needs target_reference -> target_reference. The baseline
        is evaluated on every dataset the shifts touch.
        """
        if intervention not in self._pairs:
            pairs = []
            for shift in self.shifts:
                inputs = cell_inputs(
                    "-",
                    intervention,
                    shift,
                    capability_interventions=self.config["capability_interventions"],
                    untrained=self.untrained,
                )
                for keys in inputs.values():
                    pairs += [(train, ev) for _, name, train, ev in keys if name == intervention]
            if intervention == BASELINE:
                pairs += [(NO_TRAIN, d) for d in self.datasets]
            self._pairs[intervention] = list(dict.fromkeys(pairs))
        return self._pairs[intervention]

    @cached_property
    def _pairs(self) -> dict[str, list[tuple[str, str]]]:
        return {}

    def params(self, intervention: str) -> dict:
        """An intervention's parameters: its row's defaults overridden by its config entry
        (checked against the row's declarations with the config, before any job)."""
        return {**self.entries[intervention].defaults, **self.config["interventions"][intervention]}

    def cell_files(self, model: str, intervention: str, shift_id: str) -> list[str]:
        """The prediction files one cell reads (the inputs of its single-cell target)."""
        return [f["path"] for f in self.cell_expectations(model, intervention, shift_id)]

    def cell_expectations(self, model: str, intervention: str, shift_id: str) -> list[dict]:
        """`expectations` of the prediction files one cell reads."""
        shift = next(s for s in self.shifts if s.shift_id == shift_id)
        inputs = cell_inputs(
            model,
            intervention,
            shift,
            capability_interventions=self.config["capability_interventions"],
            untrained=self.untrained,
        )
        return self._expectations(key for keys in inputs.values() for key in keys)

    def prediction_files(self) -> list[str]:
        return [f["path"] for f in self.expectations()]

    def expectations(self) -> list[dict]:
        """What every prediction file must hold: its path, the rule that writes it and its
        (model, intervention, train, eval) groups, each of which must hold exactly the pairs
        of its eval split (`genies.results.verify.PredictionFile`)."""
        return self._all_expectations

    @cached_property
    def _all_expectations(self) -> list[dict]:
        return self._expectations(
            (m, i, t, e)
            for m in self.models
            for i in self.interventions
            if m in self.models_of(i)
            for t, e in self.train_eval_pairs(i)
        )

    def _expectations(self, keys) -> list[dict]:
        files: dict[str, dict] = {}
        for key in keys:
            path = prediction_path(*key)
            if path in files:
                continue
            model, intervention, train, eval_dataset = key
            evals = [eval_dataset]
            if self.entries[intervention].family == "tuned":  # one file for all its evals
                evals = self.tuned_evals(intervention, train)
            files[path] = {
                "path": path,
                "rule": self.entries[intervention].rules[-1],
                "groups": [[model, intervention, train, e] for e in evals],
            }
        return list(files.values())

    def test_files(self, expectations: list[dict]) -> list[str]:
        """The materialised test splits of every eval dataset the files' groups cover."""
        evals = dict.fromkeys(g[3] for f in expectations for g in f["groups"])
        return [self.data_file(e, "test") for e in evals]

    # ------------------------------------------------------------------ model jobs

    @cached_property
    def _forward_work(self) -> dict[str, dict]:
        work: dict[str, dict] = {d: {"test": {"plain": {}}} for d in self.datasets}

        def need(dataset, split, stimulus, unit, layers):
            tensors = work[dataset].setdefault(split, {}).setdefault(stimulus, {})
            if unit == "heads":
                tensors["heads"] = "all"
            elif layers == "all" or tensors.get("resid") == "all":
                tensors["resid"] = "all"
            else:
                tensors["resid"] = sorted({*tensors.get("resid", []), *layers})

        for name in self.of_family("probe"):
            entry = registry.get(name)
            layers = [self.params(name)["layer"]] if entry.rule == "ccs" else "all"
            for train, ev in self.train_eval_pairs(name):
                need(train, "train", entry.stimulus, entry.unit, layers)
                need(ev, "test", entry.stimulus, entry.unit, layers)
        return work

    def forward_work(self, dataset: str, model: str | None = None) -> dict:
        """What the forward job of `dataset` computes: split -> stimulus -> {kind: layers}.

        Every dataset gets its test split's `plain` log-probs (the zero-shot baseline); a
        probe adds its stimulus on the splits it trains or predicts on, with the activation
        kind it reads (`heads`: all layers; `resid`: all layers, or only the layer CCS reads,
        possibly negative = counted from the last). Nothing else is stored. A `model` that is
        not a run model (a DPO policy or reference) needs only the `plain` log-probs.
        """
        if model is not None and model not in self.models:
            return {"test": {"plain": {}}}
        return self._forward_work[dataset]

    def forward_data(self, dataset: str, model: str | None = None) -> list[str]:
        return [self.data_file(dataset, split) for split in self.forward_work(dataset, model)]

    def dpo_forward_files(self, intervention: str, eval_dataset: str) -> dict[str, str]:
        """The forward scores a DPO intervention reads on `eval_dataset`: policy, reference."""
        policy, reference = self.entries[intervention].reads
        return {
            "policy": FORWARD_SCORES.format(model=policy, dataset=eval_dataset),
            "reference": FORWARD_SCORES.format(model=reference, dataset=eval_dataset),
        }

    def reward_scores_file(self, intervention: str, eval_dataset: str) -> str:
        """The rewards a sequence-classifier intervention reads on `eval_dataset`."""
        (model,) = self.entries[intervention].reads
        return REWARD_SCORES.format(model=model, dataset=eval_dataset)

    def few_shot_sources(self, eval_dataset: str) -> list[str]:
        return [t for t, e in self.train_eval_pairs("few_shot") if e == eval_dataset]

    def few_shot_evals(self) -> list[str]:
        return list(dict.fromkeys(e for _, e in self.train_eval_pairs("few_shot")))

    def tuned_evals(self, intervention: str, train: str) -> list[str]:
        """Datasets the reward model trained on `train` is evaluated on (its job predicts them)."""
        return [e for t, e in self.train_eval_pairs(intervention) if t == train]

    def forward_files(self) -> list[str]:
        """Forward-pass and few-shot scores that predictions read (their provenance goes to
        the `runs` table)."""
        files = [
            FORWARD_SCORES.format(model=m, dataset=d) for m in self.models for d in self.datasets
        ]
        if "few_shot" in self.config["interventions"]:
            files += [
                FEW_SHOT_SCORES.format(model=m, eval=e)
                for m in self.models
                for e in self.few_shot_evals()
            ]
        for name in self.of_family("dpo"):
            for _, ev in self.train_eval_pairs(name):
                files += self.dpo_forward_files(name, ev).values()
        for name in self.of_family("reward_model"):
            files += [self.reward_scores_file(name, ev) for _, ev in self.train_eval_pairs(name)]
        return list(dict.fromkeys(files))
