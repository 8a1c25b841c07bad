"""The Hugging Face Hub as a model source (`source: hf`, `genies.models.prepare`).

`download(repo, revision)` resolves `revision` (a branch, tag or commit hash) to its commit once,
chooses the files to fetch from the repository's own file list at that commit (before anything
is downloaded), and downloads exactly those into the user's Hugging Face cache (`HF_HOME`,
`HF_HUB_CACHE`), with the user's token (`HF_TOKEN`, or the one `hf auth login` stored). The files:

- the weights as safetensors only: the shards named by `model.safetensors.index.json`, or
  `model.safetensors` (what transformers loads); a repository with only pickle checkpoints
  (`pytorch_model.bin` and the like) is refused before any download;
- `config.json`, the generation config and the tokenizer files the repository has.

Offline (`HF_HUB_OFFLINE=1`), or when the Hub cannot be reached, the cache decides: a commit hash
is exact, a branch or tag resolves through the cache's `refs/` (what it pointed at when it was
last downloaded). Every failure is a `ModelError` naming the repository and revision and saying
what to do. huggingface_hub reads `HF_ENDPOINT`, `HF_HUB_OFFLINE` and `HF_HOME` once, when it is
first imported: set them before the job starts.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from genies.hub import explain_hub_error
from genies.models.loading import ModelError, check_model_files

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"
# Besides the weights: configuration and every tokenizer file transformers may read.
CONFIG = "config.json"
SIDE_FILES = (
    CONFIG,
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)
COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubSnapshot:
    """Files of one commit of a Hub repository, in the local cache."""

    repo: str
    revision: str  # as configured: a branch, a tag or a commit hash
    commit: str  # what `revision` resolved to
    folder: Path  # the cache's snapshots/<commit> (entries are links into its blobs)
    files: tuple[str, ...]  # the files chosen and downloaded, relative to `folder`

    def provenance(self) -> dict:
        return {"repo": self.repo, "revision": self.revision, "commit": self.commit}


def download(repo: str, revision: str = "main") -> HubSnapshot:
    """Resolve `revision` of the model repository `repo` and download its chosen files."""
    from huggingface_hub import constants

    where = f"Hugging Face model {repo}@{revision}"
    try:
        if constants.is_offline_mode():
            return _from_cache(repo, revision, where)
        try:
            return _from_hub(repo, revision, where)
        except _unreachable() as exc:
            log.warning("%s: the Hub cannot be reached (%s); using the local cache", where, exc)
            return _from_cache(repo, revision, where)
    except ModelError:
        raise
    except Exception as exc:
        explained = _explain(exc, repo, revision, where)
        if explained is None:
            raise
        raise explained from exc


def _from_hub(repo: str, revision: str, where: str) -> HubSnapshot:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    info = HfApi().model_info(repo, revision=revision)
    commit = info.sha
    names = [s.rfilename for s in info.siblings or ()]

    def read_index() -> str:
        return Path(hf_hub_download(repo, INDEX_FILE, revision=commit)).read_text()

    files = choose_files(names, read_index, where)
    absent = sorted(set(files) - set(names))
    if absent:
        raise ModelError(f"{where}: {INDEX_FILE} names shards the repository lacks: {absent}")
    log.info("%s is commit %s; downloading %s", where, commit, ", ".join(files))
    # By `revision`, so that the cache records where a branch or tag pointed (offline use
    # resolves it through that record); the download itself is of one commit, checked below.
    folder = Path(snapshot_download(repo, revision=revision, allow_patterns=list(files)))
    if folder.name != commit:
        raise ModelError(
            f"{where} moved from commit {commit} to {folder.name} during the download; "
            "prepare the model again (or pin `revision` to a commit hash)"
        )
    return _checked(HubSnapshot(repo, revision, commit, folder, files), where)


def _from_cache(repo: str, revision: str, where: str) -> HubSnapshot:
    from huggingface_hub import snapshot_download

    # Every model has a config.json: its snapshot folder, named by the commit, is the one.
    folder = Path(
        snapshot_download(repo, revision=revision, local_files_only=True, allow_patterns=[CONFIG])
    )
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    files = choose_files(names, lambda: (folder / INDEX_FILE).read_text(), where)
    # The cache's listing of the commit's files (when it has one) tells whether a chosen file,
    # or a tokenizer file the repository has, is missing from the folder.
    snapshot_download(
        repo, revision=folder.name, local_files_only=True, allow_patterns=[*files, *SIDE_FILES]
    )
    log.info("%s is commit %s in the local cache", where, folder.name)
    return _checked(HubSnapshot(repo, revision, folder.name, folder, files), where)


def _checked(snapshot: HubSnapshot, where: str) -> HubSnapshot:
    if not COMMIT.fullmatch(snapshot.commit) or snapshot.folder.name != snapshot.commit:
        raise ModelError(f"{where}: unexpected cache folder {snapshot.folder} for the commit")
    missing = [f for f in snapshot.files if not (snapshot.folder / f).is_file()]
    if missing:
        raise ModelError(
            f"{where} (commit {snapshot.commit}): {', '.join(missing)} missing in the local "
            f"cache {snapshot.folder}; download again online (unset HF_HUB_OFFLINE)"
        )
    return snapshot


def choose_files(names, read_index, where: str) -> tuple[str, ...]:
    """The files to fetch from a repository whose files are `names` (paths in the repository).

    Top-level files only. `read_index()` returns the text of the shard index when there is one;
    the shards it names are chosen whether `names` has them or not (the caller checks).
    """
    top = sorted(n for n in names if "/" not in n)
    check_model_files(
        top,
        where,
        "use a revision that has safetensors weights (the Hub's conversion bot often "
        "offers one as a pull request: revision refs/pr/<N>)",
    )
    if INDEX_FILE in top:
        try:
            shards = sorted(set(json.loads(read_index())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"{where}: {INDEX_FILE} is not a shard index ({exc})") from exc
        if not all(shard.endswith(".safetensors") for shard in shards):
            raise ModelError(f"{where}: {INDEX_FILE} names weights other than safetensors")
        weights = [INDEX_FILE, *shards]
    elif WEIGHTS_FILE in top:
        weights = [WEIGHTS_FILE]
    else:
        raise ModelError(
            f"{where} has neither {WEIGHTS_FILE} nor {INDEX_FILE} (safetensors files: "
            f"{[n for n in top if n.endswith('.safetensors')]}); transformers loads a model "
            "from one of those"
        )
    return (*weights, *(n for n in SIDE_FILES if n in top))


def _unreachable() -> tuple[type[BaseException], ...]:
    import httpx2  # huggingface_hub's HTTP client

    return (httpx2.ConnectError, httpx2.TimeoutException)


def _explain(exc: Exception, repo: str, revision: str, where: str) -> ModelError | None:
    message = explain_hub_error(exc, repo, revision, "model")
    return None if message is None else ModelError(f"{where}: {message}")
