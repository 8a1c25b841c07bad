"""Defaults of the model jobs, shared by the forward, few-shot, tune and reward-model jobs.

The config schema (schemas/config.schema.yaml) fills the same defaults into a config; these
apply when the library is called directly (tests, benches, a notebook).
"""

from __future__ import annotations

from genies.models.context import DEFAULT_POLICY

#: The scoring settings of a model job (config `scoring`): padded positions per forward call,
#: the device and dtype of the model, and which token's activations a forward pass records.
SCORING_DEFAULTS = {
    "batch_tokens": 4096,
    "device": "auto",
    "dtype": "auto",
    "activation_token": "last_token",
}

#: How a model job runs (config `threads`, `memory`, `context_policy`, `scratch_dir`; the
#: model's GPUs; the retry attempt, which makes the memory plan smaller after an out-of-memory
#: failure).
JOB_DEFAULTS = {
    "threads": None,
    "gpus": 1,
    "memory": None,
    "attempt": 1,
    "context_policy": DEFAULT_POLICY,
    "scratch_dir": None,
}
