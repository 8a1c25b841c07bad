"""Turn a validated config into the set of result paths the workflow must build.

The Snakefile asks this module which datasets, models and predictions exist; it never reads
data itself. Path templates live here so the rules and the aggregation agree on them.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import cached_property

from .errors import ConfigError
from .raw import RawData, split_path
from .shifts import Shift, datasets_of, load_shifts

log = logging.getLogger(__name__)

DATA = "results/data/{dataset}/{split}.parquet"
SHIFTS = "results/shifts.parquet"
MODEL_DIR = "resources/models/{model}"
FORWARD = "results/forward/{model}/{stimulus}/{dataset}/{split}.parquet"
PREDICTION = "results/predictions/{model}/{intervention}/{train}/{eval}.parquet"
DATABASE = "results/results.duckdb"

SPLITS = ("train", "test")
STIMULI = ("plain",)
BASELINE = "zero_shot"


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

    def baseline_predictions(self) -> list[str]:
        return [
            PREDICTION.format(model=m, intervention=BASELINE, train="none", eval=d)
            for m in self.models
            for d in self.datasets
        ]

    def prediction_files(self) -> list[str]:
        return self.baseline_predictions()

    def forward_files(self) -> list[str]:
        return [
            FORWARD.format(model=m, stimulus="plain", dataset=d, split="test")
            for m in self.models
            for d in self.datasets
        ]
