"""Turn a validated config into the set of result paths the workflow must build.

The Snakefile asks this module which datasets, models and predictions exist; it never reads
data itself. Path templates live here so the rules and the aggregation agree on them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from functools import cached_property

from . import interventions as registry
from .errors import ConfigError
from .interventions import BASELINE
from .raw import RawData, split_path
from .shifts import Shift, datasets_of, load_shifts

log = logging.getLogger(__name__)

DATA = "results/data/{dataset}/{split}.parquet"
SHIFTS = "results/shifts.parquet"
MODEL_DIR = "resources/models/{model}"
FORWARD = "results/forward/{model}/{stimulus}/{dataset}/{split}.parquet"
PREDICTION = "results/predictions/{model}/{intervention}/{train}/{eval}.parquet"
FEW_SHOT_SCORES = "results/few_shot_scores/{model}/{train}/{eval}.parquet"
DATABASE = "results/results.duckdb"

SPLITS = ("train", "test")
STIMULI = ("plain", "lat2", "yesno")
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
}


def prediction_path(model: str, intervention: str, train: str, eval_dataset: str) -> str:
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
        "id_target": [key(intervention, shift.target, shift.target)],
    }


@dataclasses.dataclass
class Plan:
    config: dict

    @cached_property
    def raw(self) -> RawData:
        return RawData(self.config["data_dir"])

    @cached_property
    def available_datasets(self) -> list[str]:
        names = self.raw.datasets()
        if not names:
            raise ConfigError(
                f"no datasets found in {self.config['data_dir']}: expected "
                "distributions/<dataset>/train.json and test.json"
            )
        return names

    @cached_property
    def shifts(self) -> list[Shift]:
        return load_shifts(self.config["shifts"], self.config["data_dir"], self.available_datasets)

    @cached_property
    def genies_pairs(self) -> list[tuple[str, str]]:
        if self.config["shifts"] == "genies":
            return [(s.source, s.target) for s in self.shifts]
        try:
            return [(s.source, s.target) for s in load_shifts("genies", self.config["data_dir"])]
        except ConfigError:
            return []

    @cached_property
    def datasets(self) -> list[str]:
        """Datasets the selected shifts touch (sources, targets, target references)."""
        return datasets_of(self.shifts)

    @property
    def models(self) -> list[str]:
        return list(self.config["run_models"])

    def raw_input(self, dataset: str, split: str) -> str:
        return str(self.raw.local_path(split_path(dataset, split)))

    def data_file(self, dataset: str, split: str) -> str:
        return DATA.format(dataset=dataset, split=split)

    def data_files(self) -> list[str]:
        return [self.data_file(d, s) for d in self.datasets for s in SPLITS]

    def cap(self, split: str):
        return self.config["caps"][f"{split}_examples"]

    @property
    def interventions(self) -> list[str]:
        return list(self.config["interventions"])

    def of_family(self, family: str) -> list[str]:
        return registry.of_family(family, self.interventions)

    def train_eval_pairs(self, intervention: str) -> list[tuple[str, str]]:
        """(train, eval) pairs a cell needs from `intervention`, in a stable order.

        Every shift needs source -> target, source -> source and target -> target; a
        capability intervention also needs target_reference -> target_reference. The baseline
        is evaluated on every dataset the shifts touch.
        """
        pairs = []
        for shift in self.shifts:
            inputs = cell_inputs(
                "-",
                intervention,
                shift,
                capability_interventions=self.config["capability_interventions"],
            )
            for keys in inputs.values():
                pairs += [(train, ev) for _, name, train, ev in keys if name == intervention]
        if intervention == BASELINE:
            pairs += [(NO_TRAIN, d) for d in self.datasets]
        return list(dict.fromkeys(pairs))

    def cell_files(self, model: str, intervention: str, shift_id: str) -> list[str]:
        """The prediction files one cell reads (the inputs of its single-cell target)."""
        shift = next(s for s in self.shifts if s.shift_id == shift_id)
        inputs = cell_inputs(
            model,
            intervention,
            shift,
            capability_interventions=self.config["capability_interventions"],
        )
        keys = [key for keys in inputs.values() for key in keys]
        return list(dict.fromkeys(prediction_path(*key) for key in keys))

    def prediction_files(self) -> list[str]:
        return [
            PREDICTION.format(model=m, intervention=i, train=t, eval=e)
            for m in self.models
            for i in self.interventions
            for t, e in self.train_eval_pairs(i)
        ]

    def forward_files(self) -> list[str]:
        """Forward-pass and few-shot scores that predictions read (their provenance goes to
        the `runs` table)."""
        files = []
        for m in self.models:
            for i in self.interventions:
                pairs = self.train_eval_pairs(i)
                if i == BASELINE:
                    files += [
                        FORWARD.format(model=m, stimulus="plain", dataset=e, split="test")
                        for _, e in pairs
                    ]
                elif i == "few_shot":
                    files += [FEW_SHOT_SCORES.format(model=m, train=t, eval=e) for t, e in pairs]
                elif registry.get(i).family == "probe":
                    st = registry.get(i).stimulus
                    files += [
                        FORWARD.format(model=m, stimulus=st, dataset=t, split="train")
                        for t, _ in pairs
                    ]
                    files += [
                        FORWARD.format(model=m, stimulus=st, dataset=e, split="test")
                        for _, e in pairs
                    ]
        return list(dict.fromkeys(files))
