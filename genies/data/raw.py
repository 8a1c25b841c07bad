"""Read-only access to a raw GENIES data folder or the upstream `genies-datasets.tar`.

Both layouts hold `distributions/<dataset>/{train,test}.json` (and possibly
`distribution_shifts/*.json`). In the archive these may sit under a leading folder; members
are found by the path from `distributions/` or `distribution_shifts/` on. Only the files the
workflow needs are ever read: upstream leftovers (`*-copy.json`, `extra.json`, `hps/`, swap
files) are ignored.
"""

from __future__ import annotations

import functools
import tarfile
from pathlib import Path

from genies.errors import DataError
from genies.io import parse_json

SPLITS = ("train", "test")
_ROOTS = ("distributions/", "distribution_shifts/")


def _normalise_member(name: str) -> str | None:
    name = name.lstrip("./")
    for root in _ROOTS:
        pos = name.find(root)
        if pos == 0 or (pos > 0 and name[pos - 1] == "/"):
            return name[pos:]
    return None


class RawData:
    """A GENIES data source: a directory or a .tar archive."""

    def __init__(self, location):
        self.location = Path(location)
        if not self.location.exists():
            raise DataError(
                self.location,
                "data location does not exist; set `data_dir` in the config to the GENIES "
                "folder or to the upstream genies-datasets.tar",
            )
        self.is_archive = self.location.is_file()
        if self.is_archive and not tarfile.is_tarfile(self.location):
            raise DataError(self.location, "is a file but not a tar archive")

    @functools.cached_property
    def _members(self) -> dict[str, str]:
        """Archive index: normalised relative path -> member name."""
        index = {}
        with tarfile.open(self.location) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    rel = _normalise_member(member.name)
                    if rel is not None:
                        index.setdefault(rel, member.name)
        return index

    def display(self, rel: str) -> str:
        """How to name a file inside this source in messages."""
        if self.is_archive:
            return f"{self.location}:{self._members.get(rel, rel)}"
        return str(self.location / rel)

    def exists(self, rel: str) -> bool:
        if self.is_archive:
            return rel in self._members
        return (self.location / rel).is_file()

    def read_bytes(self, rel: str) -> bytes:
        if not self.exists(rel):
            raise DataError(self.display(rel), "file not found")
        if not self.is_archive:
            return (self.location / rel).read_bytes()
        with tarfile.open(self.location) as tar:
            return tar.extractfile(self._members[rel]).read()

    def read_json(self, rel: str):
        """The file's JSON, checked by `genies.io.parse_json` (UTF-8, not empty, no key twice)."""
        return parse_json(self.read_bytes(rel), self.display(rel))

    def datasets(self) -> list[str]:
        """Dataset ids: folders of `distributions/` that have both train.json and test.json."""
        if self.is_archive:
            names = {rel.split("/")[1] for rel in self._members if rel.startswith("distributions/")}
        else:
            base = self.location / "distributions"
            names = {p.name for p in base.iterdir() if p.is_dir()} if base.is_dir() else set()
        return sorted(n for n in names if all(self.exists(split_path(n, s)) for s in SPLITS))

    def local_path(self, rel: str) -> Path:
        """For Snakemake inputs: the file itself, or the archive that holds it."""
        return self.location if self.is_archive else self.location / rel


def split_path(dataset: str, split: str) -> str:
    return f"distributions/{dataset}/{split}.json"
