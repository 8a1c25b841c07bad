"""How many GPUs a model's jobs need, decided without torch (the Snakefile calls it).

A registry entry may say ``gpus: N``. Otherwise N follows from the size of the weights as the
job loads them and the site's GPU size (``memory.gpu_memory_gb``): the weights may fill at most
`WEIGHT_SHARE` of each GPU, so that the KV cache, activations and the CUDA context fit beside
them. The weight size is read from the safetensors headers of a local model (only the JSON
header of each file: no torch, no tensor data), or estimated from ``params_b``.

`genies.models.load_model` spreads a model over N GPUs with the same share as its per-GPU
``max_memory``, so the count asked for here and the placement there agree.
"""

from __future__ import annotations

import json
import math
import struct
from functools import lru_cache
from pathlib import Path

# Weights may use at most this share of each GPU (the rest: KV cache, activations, buffers).
WEIGHT_SHARE = 0.8
# Bytes per parameter of a 4-bit NF4 weight with double quantisation (bitsandbytes, blocks of
# 64): 4 bits, an 8-bit absmax per block and a float32 absmax per 256 blocks.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
# Parts of a parameter name that mark a decoder block (Llama `model.layers.N`, GPT-NeoX
# `gpt_neox.layers.N`, GPT-2 `h.N`): bitsandbytes quantises their linear weights.
BLOCK_MARKERS = (".layers.", ".h.", ".blocks.")


class GpuCountError(ValueError):
    """A registry entry's GPU request or size cannot be understood."""


def read_safetensors_header(path) -> dict:
    """The JSON header of one safetensors file: name -> {dtype, shape, data_offsets}."""
    path = Path(path)
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise GpuCountError(f"{path} is not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise GpuCountError(f"{path} is not a safetensors file (header of {size} bytes)")
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return header


@lru_cache(maxsize=64)
def safetensors_shapes(directory) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of every tensor in the ``*.safetensors`` files of `directory`."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise GpuCountError(f"{directory} has no *.safetensors files")
    shapes = {}
    for file in files:
        for name, entry in read_safetensors_header(file).items():
            shapes[name] = (entry["dtype"], tuple(int(n) for n in entry["shape"]))
    return shapes


def weight_bytes(shapes: dict, dtype_bytes: float = 2, quantization: str | None = None) -> int:
    """Bytes of the weights once loaded: floating tensors at `dtype_bytes` each.

    With ``quantization="nf4"`` the 2-D weights inside decoder blocks take `NF4_BYTES` per
    parameter; embeddings, the LM head and norms stay at `dtype_bytes`. Integer tensors
    (already quantised checkpoints) count as stored.
    """
    total = 0.0
    for name, (dtype, shape) in shapes.items():
        numel = math.prod(shape)
        if dtype not in FLOAT_DTYPES:
            total += numel * DTYPE_BYTES.get(dtype, 1)
        elif quantization == "nf4" and len(shape) == 2 and _in_block(name):
            total += numel * NF4_BYTES
        else:
            total += numel * dtype_bytes
    return int(math.ceil(total))


def _in_block(name: str) -> bool:
    dotted = f".{name}"
    return any(marker in dotted for marker in BLOCK_MARKERS) and name.endswith(".weight")


def spec_weight_bytes(
    spec: dict, dtype_bytes: float = 2, quantization: str | None = None
) -> int | None:
    """Loaded weight size of a registry entry, or None when nothing tells it.

    Read from the safetensors headers of a `local` model's `path` when they are readable, else
    estimated from `params_b` (NF4: all of it at `NF4_BYTES`, a slight underestimate).
    """
    path = spec.get("path") if spec.get("source") == "local" else None
    if path:
        try:
            return weight_bytes(
                safetensors_shapes(Path(path).expanduser()), dtype_bytes, quantization
            )
        except (OSError, GpuCountError, ValueError, KeyError):
            pass  # not reachable from here (e.g. a login node): fall back to params_b
    if spec.get("params_b"):
        per_param = NF4_BYTES if quantization == "nf4" else dtype_bytes
        return int(math.ceil(float(spec["params_b"]) * 1e9 * per_param))
    return None


def model_gpus(
    spec: dict,
    gpu_memory_gb: float | None,
    dtype_bytes: float = 2,
    quantization: str | None = None,
) -> int:
    """GPUs (of one node) that one GPU job of the registry entry `spec` needs.

    ``spec["gpus"]`` when given; else 1 when the GPU size is unknown (`gpu_memory_gb` None) or
    the weight size is; else the fewest GPUs whose `WEIGHT_SHARE` holds the weights.
    """
    explicit = spec.get("gpus")
    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, int) or explicit < 1:
            raise GpuCountError(f"model 'gpus' must be an integer >= 1, got {explicit!r}")
        return explicit
    if gpu_memory_gb is None:
        return 1
    if gpu_memory_gb <= 0:
        raise GpuCountError(f"gpu_memory_gb must be positive, got {gpu_memory_gb!r}")
    size = spec_weight_bytes(spec, dtype_bytes, quantization)
    if size is None:
        return 1
    return max(1, math.ceil(size / (WEIGHT_SHARE * gpu_memory_gb * 1e9)))


def config_gpus(
    config: dict, model: str, dtype: str | None = None, quantization: str | None = None
) -> int:
    """`model_gpus` of registry model `model` with the site's ``memory.gpu_memory_gb``.

    `dtype` is the job's model dtype (default: ``scoring.dtype``); "auto" loads 2-byte weights
    on a GPU.
    """
    memory = config.get("memory") or {}
    dtype = dtype or (config.get("scoring") or {}).get("dtype", "auto")
    dtype_bytes = 4 if dtype in ("float32", "fp32") else 2
    return model_gpus(
        config["models"][model], memory.get("gpu_memory_gb"), dtype_bytes, quantization
    )
