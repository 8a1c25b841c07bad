"""What each job asks a cluster for: host memory, GPUs, GPU type, run time.

rules/common.smk calls these while Snakemake builds the DAG, so this module imports nothing
heavy (no torch): the weight size of a registered model comes from its safetensors headers
(or the `params_b` of the registry entry before a model is prepared).

Host memory of a GPU job covers what the job holds on the HOST, not the weights on the GPU:
the Python/torch/CUDA runtime, the largest weight shard while it is read and moved to the GPU,
and the job's data. Only a job that runs the model on the CPU holds the weights in host memory.
Every figure grows with the retry attempt (1, 2, 3 with the SLURM profile's `retries: 2`), so a
job killed for host memory or run time comes back with more; a job that ran out of GPU memory
also comes back with smaller batches (the attempt reaches the memory plan).
"""

from __future__ import annotations

import math
from pathlib import Path

from genies.pipeline.gpus import spec_weight_bytes

MB = 1 << 20
# Python, torch, the CUDA runtime, tokenizer and data of a model job, measured on SmolLM2
# jobs (about 1.5 GB resident on a CPU) with room for the CUDA context on a GPU node.
RUNTIME_MB = 6000
# Bytes per parameter of a model loaded on the CPU; "auto" may be float32 (no bf16 support).
BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 4}


def largest_shard_bytes(spec: dict) -> int:
    """The largest safetensors file of a local model (read and moved to the GPU one at a
    time); else the whole 16-bit weights (a model prepared from one file)."""
    if spec.get("source") == "local" and spec.get("path"):
        files = list(Path(spec["path"]).expanduser().glob("*.safetensors"))
        if files:
            return max(f.stat().st_size for f in files)
    return spec_weight_bytes(spec) or int(1e9 * 2)


def host_mem_mb(spec: dict, on_gpu: bool, attempt: int = 1, dtype: str = "auto") -> int:
    """Host memory of a model job (MB): runtime + the largest shard, or all weights on a CPU."""
    if on_gpu:
        held = largest_shard_bytes(spec)
    else:
        held = spec_weight_bytes(spec, BYTES_PER_PARAM.get(dtype, 4)) or int(1e9 * 4)
    return math.ceil(RUNTIME_MB + 1.25 * held / MB) * attempt
