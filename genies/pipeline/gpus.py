"""How many GPUs a model's jobs need, decided without torch (the Snakefile calls it).

A registry entry may say ``gpus: N``. Otherwise N follows from the size of the weights as the
job loads them and the site's GPU size (``memory.gpu_memory_gb``): the weights may fill at most
`WEIGHT_SHARE` of each GPU, so that the KV cache, activations and the CUDA context fit beside
them. The weight size is read from the safetensors headers of a local model (only the JSON
header of each file: no torch, no tensor data), or estimated from ``params_b``.

`genies.models.loading.load_model` spreads a model over N GPUs with the same share
(`genies.models.layout.WEIGHT_SHARE`) as its per-GPU ``max_memory``, so the count asked for
here and the placement there agree.
"""

from __future__ import annotations

import math
from pathlib import Path

from genies.errors import GeniesError
from genies.models.layout import NF4_BYTES, WEIGHT_SHARE, safetensors_shapes, weight_bytes


class GpuCountError(GeniesError, ValueError):
    """A registry entry's GPU request or size cannot be understood."""


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
        except (OSError, ValueError, KeyError):
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
