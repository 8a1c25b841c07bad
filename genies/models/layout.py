"""A model's shape and weights, read without torch: its layout, its decoder blocks, and the
sizes in its safetensors files.

The Snakefile reaches this module (through `genies.pipeline.gpus`) to decide how many GPUs a
model's jobs ask for, so it imports nothing heavy. Every safetensors header in the workflow
(model weights, activation files, probe states) is read by `read_safetensors_header`, which
checks the file against its header: a truncated or empty file fails with its name here, not
with a memory-map or `struct` error later.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from genies.errors import GeniesError

# A prepared model directory of a `link: true` registry entry holds this file, which names the
# folder of its weights (`genies.models.prepare`).
LINK_FILE = "genies_model_link.json"

# Weights may use at most this share of each GPU (the rest: KV cache, activations, buffers):
# the GPU count (`genies.pipeline.gpus`) and the device map's `max_memory`
# (`genies.models.loading`) both use it, so the count asked for and the placement agree.
WEIGHT_SHARE = 0.8
# Bytes per parameter of a 4-bit NF4 weight with double quantisation (bitsandbytes, blocks of
# 64): 4 bits, an 8-bit absmax per block and a float32 absmax per 256 blocks.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# Bytes per parameter that bitsandbytes leaves unquantised (embeddings, LM head, norms) in a 4-bit
# model once peft's prepare_model_for_kbit_training has run: it casts them to float32.
KBIT_UNQUANTISED_BYTES = 4
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
# Parts of a parameter name that mark a decoder block (Llama `model.layers.N`, GPT-NeoX
# `gpt_neox.layers.N`, GPT-2 `h.N`): bitsandbytes quantises their linear weights.
BLOCK_MARKERS = (".layers.", ".h.", ".blocks.")
# A header larger than this is no safetensors header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000


class SafetensorsError(GeniesError, ValueError):
    """A safetensors file is missing, truncated or not a safetensors file at all."""


@dataclass(frozen=True)
class SafetensorsHeader:
    """The header of one safetensors file: its tensors, its metadata and where data starts."""

    path: Path
    tensors: dict  # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict
    data_start: int  # byte offset of the first tensor's data

    def shapes(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {n: (e["dtype"], tuple(int(s) for s in e["shape"])) for n, e in self.tensors.items()}

    def offset(self, name: str) -> int:
        """Byte offset of tensor `name`'s data in the file."""
        return self.data_start + int(self.tensors[name]["data_offsets"][0])


def read_safetensors_header(path) -> SafetensorsHeader:
    """Read and check the header of `path` (no tensor data is read).

    Raises `SafetensorsError` naming the file when it is shorter than its header says, its
    header is not JSON, or a tensor's data lies outside the file.
    """
    path = Path(path)
    try:
        size_on_disk = path.stat().st_size
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                raise SafetensorsError(
                    f"{path}: not a safetensors file ({size_on_disk} bytes, shorter than the "
                    "8-byte header length): the file is empty or truncated"
                )
            (size,) = struct.unpack("<Q", raw)
            if size > MAX_HEADER_BYTES or 8 + size > size_on_disk:
                raise SafetensorsError(
                    f"{path}: not a safetensors file, or truncated (a header of {size} bytes "
                    f"in a file of {size_on_disk})"
                )
            text = handle.read(size)
    except OSError as exc:
        raise SafetensorsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        tensors = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(
            f"{path}: the safetensors header is not valid JSON ({exc})"
        ) from None
    if not isinstance(tensors, dict):
        raise SafetensorsError(f"{path}: the safetensors header is not a JSON object")
    metadata = tensors.pop("__metadata__", None) or {}
    data_bytes = size_on_disk - 8 - size
    for name, entry in tensors.items():
        try:
            end = int(entry["data_offsets"][1])
            entry["dtype"], entry["shape"]  # noqa: B018 - both must be there
        except (KeyError, TypeError, IndexError, ValueError):
            raise SafetensorsError(
                f"{path}: tensor {name!r} has a malformed header entry"
            ) from None
        if end > data_bytes:
            raise SafetensorsError(
                f"{path}: truncated: tensor {name!r} ends at byte {end} of the data, but the "
                f"file holds {data_bytes} bytes of data"
            )
    return SafetensorsHeader(path, tensors, metadata, 8 + size)


@lru_cache(maxsize=64)
def safetensors_shapes(directory) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of every tensor in the ``*.safetensors`` files of `directory`."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise SafetensorsError(f"{directory} has no *.safetensors files")
    shapes = {}
    for file in files:
        shapes.update(read_safetensors_header(file).shapes())
    return shapes


def parameter_count(shapes: dict) -> int:
    return sum(math.prod(shape) for _, shape in shapes.values())


def loaded_bytes(
    quantisable: float, other: float, dtype_bytes: float = 2, quantization: str | None = None
) -> int:
    """Bytes of floating weights once loaded: `quantisable` parameters (the 2-D weights of the
    decoder blocks) and `other` ones (embeddings, LM head, norms).

    The one rule of the GPU count (`genies.pipeline.gpus`), the memory model
    (`genies.models.memory.Shape.weight_bytes`) and the header reading (`weight_bytes`):
    `dtype_bytes` each; with ``quantization="nf4"`` the quantisable ones take `NF4_BYTES` and the
    others `KBIT_UNQUANTISED_BYTES` (float32, as k-bit preparation leaves them).
    """
    if quantization == "nf4":
        return int(math.ceil(quantisable * NF4_BYTES + other * KBIT_UNQUANTISED_BYTES))
    return int(math.ceil((quantisable + other) * dtype_bytes))


def weight_bytes(shapes: dict, dtype_bytes: float = 2, quantization: str | None = None) -> int:
    """Bytes of the weights in `shapes` (`safetensors_shapes`) once loaded (`loaded_bytes`).

    Integer tensors (already quantised checkpoints) count as stored.
    """
    stored, quantisable, other = 0, 0, 0
    for name, (dtype, shape) in shapes.items():
        numel = math.prod(shape)
        if dtype not in FLOAT_DTYPES:
            stored += numel * DTYPE_BYTES.get(dtype, 1)
        elif len(shape) == 2 and _in_block(name):
            quantisable += numel
        else:
            other += numel
    return stored + loaded_bytes(quantisable, other, dtype_bytes, quantization)


def _in_block(name: str) -> bool:
    dotted = f".{name}"
    return any(marker in dotted for marker in BLOCK_MARKERS) and name.endswith(".weight")


def model_layout(model_or_config) -> dict:
    """num_layers, num_heads, num_kv_heads, head_dim, hidden_size of a model (or its config)."""
    config = getattr(model_or_config, "config", model_or_config)
    text_config = getattr(config, "get_text_config", None)
    if callable(text_config):
        config = text_config()
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return {
        "num_layers": int(config.num_hidden_layers),
        "num_heads": heads,
        "num_kv_heads": int(kv_heads),
        "head_dim": int(head_dim),
        "hidden_size": hidden,
    }


def weights_folder(model_dir) -> Path:
    """The folder holding a prepared model's weights and config.json: `model_dir`, or the
    folder its `LINK_FILE` names."""
    model_dir = Path(model_dir)
    link = model_dir / LINK_FILE
    if link.is_file():
        return Path(json.loads(link.read_text())["path"])
    return model_dir


def config_layout(model_dir) -> dict:
    """`model_layout` of a model directory's config.json, read without transformers."""
    config = json.loads((weights_folder(model_dir) / "config.json").read_text())
    config = config.get("text_config", config)  # a multimodal model's language model
    return model_layout(SimpleNamespace(**config))


def resolve_layers(layers, n_layers: int):
    """ "all", or the sorted distinct layer indices (negative ones count from the last)."""
    if layers == "all":
        return "all"
    resolved = set()
    for layer in map(int, layers):
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"layer {layer} is outside the model's {n_layers} layers")
        resolved.add(layer % n_layers)
    return sorted(resolved)


def activation_shapes(n_rows: int, layout: dict, heads: bool, resid_layers) -> dict:
    """Tensor shapes of one (split, stimulus) of a forward job's activation file
    (`genies.forward.activations`): `resid_layers` "all", a list, or None (none)."""
    layers, hidden = layout["num_layers"], layout["hidden_size"]
    shapes = {}
    if heads:
        shapes["heads"] = ((n_rows, layers, layout["num_heads"], layout["head_dim"]), np.float16)
    if resid_layers is not None:
        n = layers if resid_layers == "all" else len(resid_layers)
        shapes["resid"] = ((n_rows, n, hidden), np.float16)
    return shapes


def decoder_layers(model) -> list:
    """The decoder blocks of a causal LM (Llama/Mistral/Qwen `model.layers`, GPT-NeoX)."""
    base = getattr(model, "base_model", model)
    for path in ("model.layers", "layers", "gpt_neox.layers", "model.model.layers"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return list(obj)
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
