"""How many GPUs a model's jobs need: a function of the configuration alone, decided without
torch (the Snakefile calls it).

The count (`config_gpus`) is a registry entry's ``gpus: N``; else the fewest GPUs of the site's
size (``memory.gpu_memory_gb``) whose `WEIGHT_SHARE` holds the weights as the job loads them,
estimated from the entry's ``params_b`` (`estimated_weight_bytes`); 1 when the GPU size is not
set. The weights themselves never decide it, so it is the same on a login node that cannot see
them and on one that can.

Where the weights can be read (a local model's safetensors headers: from the host Snakemake
runs on when it sees them, and always in the prepare_model job), they check the count: one too
small for them stops the run with the count to set (`check_weights`).

GPU size. ``memory.gpu_memory_gb`` is the size a card is sold as (80 for an "80 GB" card). The
count uses what torch reports as that card's memory (`GPU_CAPACITY_BYTES`), the figure
`genies.models.loading.load_model` spreads a model by (``WEIGHT_SHARE x total_memory`` per GPU),
so the count asked for and the placement agree. A size not in the table is taken as the card's
real capacity in GB (1e9 bytes).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from genies.errors import GeniesError
from genies.models.layout import WEIGHT_SHARE, loaded_bytes, safetensors_shapes, weight_bytes

# Nominal GB of a card -> bytes of memory torch reports for it
# (`torch.cuda.get_device_properties(i).total_memory`, which is CUDA's totalGlobalMem, the figure
# deviceQuery prints). It varies by some tens of MB with the driver; each entry is rounded down
# from the smallest figure found in public printouts:
#   40: A100-SXM4-40GB 42,298,834,944 (deviceQuery, driver 12.2; bottlerocket-os/bottlerocket
#       pull request 3873);
#   48: L40S 47,576,711,168 (deviceQuery, driver 12.4; README of the cuda-device-query crate);
#   80: A100-SXM4-80GB 84,987,740,160 (deviceQuery, driver 12.2) to 85,100,068,864 (driver 12.5,
#       thamada/nvidia-smi nvsim/A100SXMx4_deviceQuery.py); H100 80GB HBM3 85,017,755,648
#       (driver 13.0) to 85,045,477,376 (driver 12.7, thamada/nvidia-smi
#       nvsim/H100SXMx8_deviceQuery.py);
#   141: H200 143,156 MiB = 150,109,863,936 (torch's _CudaDeviceProperties repr,
#       total_memory=143156MB, in a public Modal example).
# nvidia-smi shows more (H100 81,559 MiB, H200 143,771 MiB): the driver keeps the difference.
GPU_CAPACITY_BYTES = {40: 42.2e9, 48: 47.5e9, 80: 84.9e9, 141: 150.0e9}
# Parameters of the sources that need no `params_b` (SmolLM2-135M; the tiny test models have
# well under a million).
SOURCE_PARAMS_B = {"smollm2": 0.135, "tiny": 0.001}
# The share of a model's parameters that a 4-bit base keeps unquantised (embeddings and LM
# head, in float32 after k-bit preparation) is at most UNQUANTISED_SHARE x (8 / params_b)^0.5:
# Llama-3-8B 13.1%, Qwen2.5-7B 14%, Gemma-2-2B 23%, Qwen2.5-14B 10.5%, Gemma-2-27B 4.3%,
# Llama-3-70B 3.0%, Qwen2.5-72B 3.4%, LLaMA-1 7B-65B 3.9-0.8%. The estimate of an NF4 base
# uses that bound, so that the count from `params_b` is never below the one its weights need.
UNQUANTISED_SHARE = 0.15


class GpuCountError(GeniesError, ValueError):
    """A registry entry's GPU request or size cannot be understood, or is too small."""


def gpu_capacity_bytes(gpu_memory_gb: float) -> int:
    """Bytes of memory of one GPU sold as `gpu_memory_gb` GB (`GPU_CAPACITY_BYTES`)."""
    if gpu_memory_gb <= 0:
        raise GpuCountError(f"memory.gpu_memory_gb must be positive, got {gpu_memory_gb!r}")
    return int(GPU_CAPACITY_BYTES.get(gpu_memory_gb, gpu_memory_gb * 1e9))


def gpus_for(size: int, capacity: int) -> int:
    """The fewest GPUs of `capacity` bytes whose `WEIGHT_SHARE` holds `size` bytes of weights."""
    return max(1, math.ceil(size / (WEIGHT_SHARE * capacity)))


def unquantised_share(params_b: float) -> float:
    """Upper bound of the share of parameters a 4-bit base leaves unquantised (see above)."""
    return min(1.0, UNQUANTISED_SHARE * math.sqrt(8 / params_b))


def params_b_of(spec: dict) -> float | None:
    """The parameter count (billions) a registry entry states, or its source implies."""
    if spec.get("params_b"):
        return float(spec["params_b"])
    return SOURCE_PARAMS_B.get(spec.get("source"))


def estimated_weight_bytes(
    spec: dict, dtype_bytes: float = 2, quantization: str | None = None
) -> int | None:
    """Loaded weight size of a registry entry from its configuration alone (None: unknown).

    ``params_b`` parameters at `dtype_bytes`; NF4 (`genies.models.layout.loaded_bytes`): the
    `unquantised_share` of them in float32, the rest at `genies.models.layout.NF4_BYTES`.
    """
    params_b = params_b_of(spec)
    if params_b is None:
        return None
    params = params_b * 1e9
    other = params * unquantised_share(params_b) if quantization == "nf4" else 0
    return loaded_bytes(params - other, other, dtype_bytes, quantization)


def readable_weights_dir(spec: dict) -> Path | None:
    """The weights folder of a `local` entry when this host can read it, else None."""
    path = spec.get("path") if spec.get("source") == "local" else None
    if path and any(Path(path).expanduser().glob("*.safetensors")):
        return Path(path).expanduser()
    return None


@lru_cache(maxsize=256)
def _header_weight_bytes(folder: str, dtype_bytes: float, quantization: str | None) -> int:
    return weight_bytes(safetensors_shapes(Path(folder)), dtype_bytes, quantization)


def real_weight_bytes(folder, dtype_bytes: float = 2, quantization: str | None = None) -> int:
    """Loaded weight size of the safetensors weights in `folder`, from their headers."""
    return _header_weight_bytes(str(folder), float(dtype_bytes), quantization)


def model_gpus(
    spec: dict,
    gpu_memory_gb: float | None,
    dtype_bytes: float = 2,
    quantization: str | None = None,
    name: str = "?",
) -> int:
    """GPUs (of one node) that one GPU job of the registry entry `spec` (model `name`) needs.

    ``spec["gpus"]`` when given; else 1 when the GPU size is unknown (`gpu_memory_gb` None);
    else the fewest GPUs whose `WEIGHT_SHARE` holds `estimated_weight_bytes`. An entry of
    unknown size is an error that says what to set.
    """
    explicit = spec.get("gpus")
    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, int) or explicit < 1:
            raise GpuCountError(f"model {name!r}: 'gpus' must be an integer >= 1, got {explicit!r}")
        return explicit
    if gpu_memory_gb is None:
        return 1
    capacity = gpu_capacity_bytes(gpu_memory_gb)
    size = estimated_weight_bytes(spec, dtype_bytes, quantization)
    if size is None:
        raise GpuCountError(
            f"model {name!r}: its GPU count cannot be worked out from the configuration "
            f"(memory.gpu_memory_gb is {gpu_memory_gb}, but the registry entry has neither "
            f"'gpus' nor 'params_b'); set 'params_b' (its parameter count in billions) or "
            f"'gpus' (the GPUs of one node each of its jobs uses) in models.{name}"
        )
    return gpus_for(size, capacity)


def check_weights(
    spec: dict,
    count: int,
    gpu_memory_gb: float | None,
    folder,
    dtype_bytes: float = 2,
    quantization: str | None = None,
    name: str = "?",
) -> None:
    """Raise `GpuCountError` when `count` GPUs cannot hold the weights in `folder`.

    Nothing to check when the GPU size is unknown (`gpu_memory_gb` None).
    """
    if gpu_memory_gb is None:
        return
    capacity = gpu_capacity_bytes(gpu_memory_gb)
    size = real_weight_bytes(folder, dtype_bytes, quantization)
    needed = gpus_for(size, capacity)
    if needed <= count:
        return
    how = "its 'gpus'" if spec.get("gpus") is not None else f"'params_b: {spec.get('params_b')}'"
    loaded = f"{_dtype_name(dtype_bytes)}" + (f", {quantization}" if quantization else "")
    raise GpuCountError(
        f"model {name!r}: its weights in {folder} take {size / 1e9:.1f} GB as loaded "
        f"({loaded}) and need {needed} GPUs of {gpu_memory_gb} GB ({WEIGHT_SHARE:.0%} of "
        f"{capacity / 1e9:.1f} GB each for weights), but the configuration gives it {count} "
        f"(from {how}); set 'gpus: {needed}' in models.{name}"
    )


def _dtype_name(dtype_bytes: float) -> str:
    return "float32" if dtype_bytes == 4 else "16-bit"


def config_dtype_bytes(config: dict, dtype: str | None = None) -> int:
    """Bytes per weight of a job's model dtype (default ``scoring.dtype``; "auto" on a GPU: 2)."""
    dtype = dtype or (config.get("scoring") or {}).get("dtype", "auto")
    return 4 if dtype in ("float32", "fp32") else 2


def config_gpus(
    config: dict,
    model: str,
    dtype: str | None = None,
    quantization: str | None = None,
    weights=None,
) -> int:
    """`model_gpus` of registry model `model` with the site's ``memory.gpu_memory_gb``.

    `dtype` is the job's model dtype (default: ``scoring.dtype``). `weights`, a folder of the
    model's safetensors, checks the count (`check_weights`) and never changes it. With
    ``scoring.device: cpu`` no GPU holds the model: nothing is checked, and an entry of
    unknown size gets 1.
    """
    spec = config["models"][model]
    gpu_memory_gb = (config.get("memory") or {}).get("gpu_memory_gb")
    dtype_bytes = config_dtype_bytes(config, dtype)
    if (config.get("scoring") or {}).get("device", "auto") == "cpu":
        weights = None  # no GPU will hold them
        if spec.get("gpus") is None and params_b_of(spec) is None:
            return 1
    count = model_gpus(spec, gpu_memory_gb, dtype_bytes, quantization, model)
    if weights is not None:
        check_weights(spec, count, gpu_memory_gb, weights, dtype_bytes, quantization, model)
    return count


def config_quantizations(config: dict, model: str) -> set:
    """The quantizations the GPU jobs of `model` load it with (None: none): a run model's
    trained reward models (family ``tuned``) may load a 4-bit base."""
    from genies.pipeline import interventions as registry

    found = {None}
    if model in config.get("run_models", ()):
        for name, params in (config.get("interventions") or {}).items():
            entry = registry.REGISTRY.get(name)
            if entry is not None and entry.family == "tuned":
                quantization = {**entry.defaults, **(params or {})}.get("quantization")
                found.add(None if quantization in (None, "none") else quantization)
    return found


def check_model_gpus(config: dict, model: str, weights="readable") -> None:
    """Check the GPU count of every job of `model` (each quantization it is loaded with)
    against its weights: `weights` a folder (the prepare_model job, which can always read
    them), or "readable": the entry's local path when this host can read it (Snakemake, while
    it builds the DAG; nothing to check when it cannot)."""
    if weights == "readable":
        weights = readable_weights_dir(config["models"][model])
    for quantization in sorted(config_quantizations(config, model), key=str):
        config_gpus(config, model, quantization=quantization, weights=weights)
