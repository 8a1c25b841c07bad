"""What each job asks a cluster for: host memory, GPUs, GPU type, run time.

rules/common.smk calls these while Snakemake builds the DAG, so this module imports nothing
heavy (no torch): the weight size of a registered model comes from its safetensors headers
(or the `params_b` of the registry entry before a model is prepared).

Host memory of a GPU job covers what the job holds on the HOST, not the weights on the GPU:
the Python/torch/CUDA runtime, the largest weight shard while it is read and moved to the GPU,
and the job's data. Only a job that runs the model on the CPU holds the weights in host memory.
A forward job whose activation file goes to a tmpfs (`genies.scratch.scratch_in_memory`) also
holds that file in memory: `activation_file_bytes` is added. Every other figure grows with
the retry attempt (1, 2, 3 with the SLURM profile's `retries: 2`), so a job killed for host
memory or run time comes back with more; a job that ran out of GPU memory also comes back with
smaller batches (the attempt reaches the memory plan).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from genies.data.materialise import read_examples
from genies.data.stimuli import stimulus_turns
from genies.models.layout import activation_shapes, config_layout, resolve_layers
from genies.pipeline.gpus import estimated_weight_bytes, readable_weights_dir, real_weight_bytes

MB = 1 << 20
# Python, torch, the CUDA runtime, tokenizer and data of a model job, measured on SmolLM2
# jobs (about 1.5 GB resident on a CPU) with room for the CUDA context on a GPU node.
RUNTIME_MB = 6000
# Bytes per parameter of a model loaded on the CPU; "auto" may be float32 (no bf16 support).
BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 4}


def spec_weight_bytes(spec: dict, dtype_bytes: float = 2) -> int | None:
    """A registry entry's weight size: from its headers when this host reads them, else
    estimated from `params_b` (None: neither)."""
    folder = readable_weights_dir(spec)
    if folder is not None:
        return real_weight_bytes(folder, dtype_bytes)
    return estimated_weight_bytes(spec, dtype_bytes)


def largest_shard_bytes(spec: dict) -> int:
    """The largest safetensors file of a local model (read and moved to the GPU one at a
    time); else the whole 16-bit weights (a model prepared from one file)."""
    folder = readable_weights_dir(spec)
    if folder is not None:
        return max(f.stat().st_size for f in folder.glob("*.safetensors"))
    return spec_weight_bytes(spec) or int(1e9 * 2)


def host_mem_mb(spec: dict, on_gpu: bool, attempt: int = 1, dtype: str = "auto") -> int:
    """Host memory of a model job (MB): runtime + the largest shard, or all weights on a CPU."""
    if on_gpu:
        held = largest_shard_bytes(spec)
    else:
        held = spec_weight_bytes(spec, BYTES_PER_PARAM.get(dtype, 4)) or int(1e9 * 4)
    return held_mem_mb(held, attempt)


def held_mem_mb(held: int, attempt: int = 1) -> int:
    """Host memory (MB) of a model job that holds `held` bytes of weights at once."""
    return math.ceil(RUNTIME_MB + 1.25 * held / MB) * attempt


def activation_bytes(work: dict, responses: dict, layout: dict) -> int:
    """Bytes of the tensors of a forward job's activation file: `work` (split -> stimulus ->
    {kind: layers}, `genies.pipeline.plan.Plan.forward_work`) over `responses` (split -> the
    response lists of its examples) for a model of `layout` (`genies.models.layout`)."""
    total = 0
    for split, stimuli in work.items():
        for stimulus, kinds in stimuli.items():
            units = stimulus_turns(stimulus, [""] * len(responses[split]), responses[split])[2]
            rows = sum(map(len, units))
            layers = kinds.get("resid")
            layers = None if layers is None else resolve_layers(layers, layout["num_layers"])
            shapes = activation_shapes(rows, layout, "heads" in kinds, layers)
            total += sum(math.prod(s) * np.dtype(t).itemsize for s, t in shapes.values())
    return total


def activation_file_bytes(work: dict, data_files: dict, limits: dict, model_dir) -> int:
    """`activation_bytes` of a forward job over its materialised `data_files` (split ->
    Parquet, the first `limits[split]` examples) with the layout of the prepared `model_dir`.
    Raises FileNotFoundError naming a missing input."""
    for path in [model_dir, *data_files.values()]:
        if not Path(path).exists():
            raise FileNotFoundError(2, "not built yet", str(path))
    responses = {
        split: read_examples(data_files[split], limits.get(split)).column("responses").to_pylist()
        for split in work
    }
    return activation_bytes(work, responses, config_layout(model_dir))
