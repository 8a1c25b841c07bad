"""Training checkpoints: atomic, pickle-free, resumable (used by `genies.methods.tuned.training`).

A work directory holds ``run.json`` (the fingerprint of the run: method, params, seed, data,
base model) and at most one complete checkpoint ``step-NNNNNN/``:

- ``trainable.safetensors``: the trainable tensors (adapters or virtual tokens, and the head);
- ``optimizer.safetensors``: the optimizer's per-parameter tensors, keyed ``<index>.<name>``;
- ``best.safetensors``: the trainable tensors of the lowest-validation-loss checkpoint so far
  (absent until the first validation);
- ``state.json``: step, data position, training-loss and validation histories, best step,
  accumulated seconds, the optimizer's param groups (and any non-tensor optimizer state).

When the run finishes, its last checkpoint keeps only ``best.safetensors`` and a state marked
``finished``: the training job's rerun (e.g. because a dataset it only predicts changed)
then loads those weights and trains nothing.

A checkpoint is written into ``.tmp-step-NNNNNN-<pid>/`` and renamed into place, so a killed
job leaves either the old or the new checkpoint, never a half-written one; the rename is the
commit point, and older checkpoints are deleted only after it. A work directory whose
``run.json`` does not match the current run (other params, data or model) is discarded, so a
changed config never resumes from a stale checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from genies.io import write_json
from genies.methods.tuned.reward_model import load_trainable, trainable_tensors

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
BEST_FILE = "best.safetensors"
STATE_FILE = "state.json"


def prepare_work_dir(work_dir, fingerprint: dict) -> None:
    """Create `work_dir`, discarding it first when it belongs to another run."""
    work_dir = Path(work_dir)
    run_file = work_dir / RUN_FILE
    fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back (tuples -> lists)
    if work_dir.exists():
        old = json.loads(run_file.read_text()) if run_file.is_file() else None
        if old != fingerprint:
            log.warning("discarding %s: it holds checkpoints of a different run", work_dir)
            shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in work_dir.glob(".tmp-*"):  # left by a killed job
        shutil.rmtree(stale, ignore_errors=True)
    if not run_file.is_file():
        write_json(fingerprint, run_file)


def latest_checkpoint(work_dir) -> Path | None:
    done = sorted(p for p in Path(work_dir).glob("step-*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def save_checkpoint(work_dir, model, optimizer, state: dict, is_best: bool) -> Path:
    """Write the checkpoint of `state["step"]` atomically; keep only it. Returns its path."""
    work_dir = Path(work_dir)
    previous = latest_checkpoint(work_dir)
    name = f"step-{state['step']:06d}"
    tmp = work_dir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(trainable_tensors(model), tmp / TRAINABLE_FILE)
    tensors, meta = optimizer_tensors(optimizer)
    save_file(tensors, tmp / OPTIMIZER_FILE)
    if is_best:
        shutil.copyfile(tmp / TRAINABLE_FILE, tmp / BEST_FILE)
    elif previous is not None and (previous / BEST_FILE).is_file():
        shutil.copyfile(previous / BEST_FILE, tmp / BEST_FILE)
    write_json({**state, "optimizer": meta}, tmp / STATE_FILE)
    final = work_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in work_dir.glob("step-*"):
        if old != final:
            shutil.rmtree(old)
    return final


def load_checkpoint(path, model, optimizer) -> dict:
    """Restore trainable tensors and optimizer from checkpoint `path`; return its state.

    A finished run's checkpoint (`finish_work_dir`) holds only the selected weights: they
    are loaded and the optimizer is left alone (nothing is left to train)."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    meta = state.pop("optimizer")
    if state.get("finished"):
        load_trainable(model, load_file(path / BEST_FILE))
        return state
    load_trainable(model, load_file(path / TRAINABLE_FILE))
    load_optimizer(optimizer, load_file(path / OPTIMIZER_FILE), meta)
    return state


def finish_work_dir(work_dir) -> Path:
    """Mark the last checkpoint finished and drop what only resuming needs (the last step's
    weights and the optimizer state); returns the selected weights file, which stays so a
    rerun with the same fingerprint reuses it instead of training again."""
    last = latest_checkpoint(work_dir)
    state = json.loads((last / STATE_FILE).read_text())
    if not state.get("finished"):
        state["finished"] = True
        write_json(state, last / STATE_FILE)
        for name in (TRAINABLE_FILE, OPTIMIZER_FILE):
            (last / name).unlink(missing_ok=True)
    return last / BEST_FILE


def optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state as (tensors for safetensors, JSON-able rest): no pickle."""
    sd = optimizer.state_dict()
    tensors, extra = {}, {}
    for index, values in sd["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                extra.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "extra": extra}


def load_optimizer(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["extra"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
