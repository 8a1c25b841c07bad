"""The model registry's entries (`models:` in the config): which keys each source takes, and the
checks of a local model directory, a model's file list and the tiny model's sizes
(`tiny_params`) that need no torch.

`SOURCE_KEYS` is the one table of sources: the config check (before any job,
`genies.pipeline.config`) rejects a key its entry's source does not take, and model preparation
(`genies.models.prepare`) accepts exactly these sources; the config schema gives each key's type.
Adding a source is one row here, its keys in the schema and its preparation in
`genies.models.prepare`.

A `local` entry's directory is checked where the workflow is started when it is visible there
(`local_dir_problem`: a directory with config.json, safetensors weights and tokenizer files).
A relative path is relative to the working directory, which every job shares: missing there, it
is an error. An absolute path that does not exist there may exist only on the cluster's nodes:
a warning says that the `prepare_model` job checks it where it runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import MappingProxyType

from genies.errors import ConfigError

log = logging.getLogger(__name__)

#: The tiny test model's parameters and their defaults (`genies.models.tiny`).
TINY_DEFAULTS = MappingProxyType(
    {
        "seed": 0,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": None,  # None: same as num_heads
        "intermediate_size": 128,
        "vocab_size": 512,
        "max_position_embeddings": 2048,
    }
)
#: The byte alphabet plus the tiny tokenizer's pad, BOS and EOS (`genies.models.tiny`).
TINY_MIN_VOCAB_SIZE = 256 + 3
#: Keys of every entry, whatever its source.
COMMON_KEYS = ("source", "chat_template", "params_b", "gpus", "gpu_model")
#: Source -> the keys of its own.
SOURCE_KEYS = MappingProxyType(
    {
        "smollm2": ("gguf_file",),
        "local": ("path", "link"),
        "hf": ("repo", "revision", "link"),
        "tiny": tuple(TINY_DEFAULTS),
    }
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_entry(name: str, spec: dict, used: bool = True) -> None:
    """Check registry entry `name`: its keys against its source's, a tiny model's sizes, and,
    when the run `used` it, a local model's directory (module docstring). Raises ConfigError
    naming the entry."""
    where = f"models/{name}"
    source = spec.get("source")
    if source not in SOURCE_KEYS:
        raise ConfigError(f"{where}/source: {source!r}; allowed sources: {', '.join(SOURCE_KEYS)}")
    allowed = (*COMMON_KEYS, *SOURCE_KEYS[source])
    for key in spec:
        if key not in allowed:
            owners = [s for s, keys in SOURCE_KEYS.items() if key in keys]
            note = f" ({key} is a key of source {' and '.join(owners)})" if owners else ""
            raise ConfigError(
                f"{where}: unknown key {key!r} for source {source}{note}; a {source} entry takes "
                f"{', '.join(allowed)}"
            )
    if source == "tiny":
        try:
            tiny_params(spec)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if source == "local" and used:
        _check_local_path(where, spec["path"])


def _check_local_path(where: str, value: str) -> None:
    path = Path(value).expanduser()
    if not path.exists() and path.is_absolute():
        log.warning(
            "%s/path: %s does not exist on this host; the prepare_model job checks it where it "
            "runs (a cluster node may see it). If this run is local, fix the path now: the job "
            "will fail.",
            where,
            path,
        )
        return
    problem = local_dir_problem(path)
    if problem:
        raise ConfigError(f"{where}/path: {problem}")


def tiny_params(spec: dict) -> dict:
    """The tiny-model parameters of `spec` with defaults filled in, validated."""
    params = {key: spec.get(key, default) for key, default in TINY_DEFAULTS.items()}
    if params["num_kv_heads"] is None:
        params["num_kv_heads"] = params["num_heads"]
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"tiny model: '{key}' must be an integer, got {value!r}")
        if key != "seed" and value <= 0:
            raise ValueError(f"tiny model: '{key}' must be positive, got {value}")
    if params["hidden_size"] % params["num_heads"]:
        raise ValueError(
            f"tiny model: hidden_size {params['hidden_size']} is not divisible by "
            f"num_heads {params['num_heads']}"
        )
    if params["num_heads"] % params["num_kv_heads"]:
        raise ValueError(
            f"tiny model: num_heads {params['num_heads']} is not divisible by "
            f"num_kv_heads {params['num_kv_heads']}"
        )
    if params["vocab_size"] < TINY_MIN_VOCAB_SIZE:
        raise ValueError(f"tiny model: vocab_size must be >= {TINY_MIN_VOCAB_SIZE}")
    return params


def local_dir_problem(path) -> str | None:
    """What keeps `path` from being a local model directory, or None: it must be a directory
    whose files pass `model_files_problem`."""
    src = Path(path).expanduser().resolve()
    if not src.is_dir():
        relative = "" if Path(path).is_absolute() else f" (from the working directory {Path.cwd()})"
        return f"local model path {src} is not a directory{relative}"
    return model_files_problem(
        [p.name for p in src.iterdir()],
        f"local model directory {src}",
        "convert them to safetensors first",
    )


def model_files_problem(files, where: str, pickle_advice: str) -> str | None:
    """What keeps a model's file list (top-level names) from being usable, or None: it needs
    config.json, safetensors weights (pickles are refused: unpickling can run code) and
    tokenizer files; `pickle_advice` says what to do when it has only pickle checkpoints."""
    files = sorted(files)
    if "config.json" not in files:
        return f"{where} has no config.json; files found: {files}"
    if not any(name.endswith(".safetensors") for name in files):
        pickles = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
        hint = (
            f" It only has pickle checkpoints ({', '.join(pickles)}), which are refused because "
            f"unpickling can execute code; {pickle_advice}."
            if pickles
            else ""
        )
        return f"{where} has no *.safetensors weights; files found: {files}." + hint
    if not any(name in files for name in TOKENIZER_FILES):
        return (
            f"{where} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); files "
            f"found: {files}"
        )
    return None
