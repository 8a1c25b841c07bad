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

With the SLURM profile the GPU jobs of a model run in bundles, several jobs one after another
in one allocation (docs/slurm.md); a GPU job that fails there is first retried in the same
allocation (`allocation_retries`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from genies.pipeline.gpus import spec_weight_bytes

MB = 1 << 20
# Python, torch, the CUDA runtime, tokenizer and data of a model job, measured on SmolLM2
# jobs (about 1.5 GB resident on a CPU) with room for the CUDA context on a GPU node.
RUNTIME_MB = 6000
# Retries of a failed GPU job inside its SLURM allocation: attempts 1, 2, 3, as the memory
# plan halves its batches twice.
ALLOCATION_RETRIES = 2
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


def allocation_retries(environ: Mapping[str, str]) -> int | None:
    """The GPU rules' own `retries`: ALLOCATION_RETRIES in the Snakemake that runs a SLURM
    job's batch step, None (the `--retries` of the run) anywhere else.

    A SLURM job runs Snakemake twice over: in its batch step, Snakemake starts each job of the
    bundle in a job step of its own (`srun`), where a second Snakemake runs the job. Snakemake
    passes `--retries 0` to both, and a rule's own `retries` overrides it. Set in the batch
    step, it makes that Snakemake run a failed job again in a new step, with the next attempt
    and the same allocation, while the bundle's other jobs keep their outputs. In the job step
    (SLURM sets SLURM_STEP_ID there, not in the batch step) it would retry every attempt once
    more itself. On the submit host the profile's `retries` applies: it resubmits a failed
    bundle with more memory and time; local runs keep their own `--retries`.
    """
    if environ.get("SLURM_JOB_ID") and "SLURM_STEP_ID" not in environ:
        return ALLOCATION_RETRIES
    return None
