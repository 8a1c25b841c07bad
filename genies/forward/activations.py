"""Last-token activations captured during the forward pass, streamed to safetensors.

Two kinds of activation can be recorded for every scored text (one row per response, in the
caller's example-major order), at the text's last token:

* `resid`: the residual stream entering decoder layers (`hidden_states[i]` of a transformers
  model, i = 0 .. n_layers-1: index 0 is the embedding output), shape [rows, n_layers, hidden]
  (or a subset of the layers, e.g. the one CCS reads);
* `heads`: the per-head attention output before `o_proj` (the input of `o_proj`, split into
  heads), shape [rows, n_layers, n_heads, head_dim].

Forward pre-hooks sit on just the modules needed (each decoder layer and each `o_proj`); no
layer's full hidden states are kept. Rows are written into a pre-sized safetensors file
through a memory map as batches finish, so memory is bounded by the batch, not the dataset;
the file is written in node-local scratch space (`genies.scratch`: config ``scratch_dir``, else
$TMPDIR when it has room) and copied into place when complete.
One file may hold several tensors (the forward job names them "<split>/<stimulus>/<kind>").
"""

from __future__ import annotations

import json
import struct

import numpy as np
import torch
from safetensors.numpy import load_file

from genies.io import atomic_path
from genies.models.layout import decoder_layers

_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}


def _head_projection(layer):
    for attn_name in ("self_attn", "attention"):
        attn = getattr(layer, attn_name, None)
        if attn is not None:
            for proj in ("o_proj", "dense"):
                if hasattr(attn, proj):
                    return getattr(attn, proj)
    raise ValueError(f"cannot find the attention output projection of {type(layer).__name__}")


class ActivationWriter:
    """A safetensors file of fixed-shape tensors, filled row by row through a memory map."""

    def __init__(
        self,
        path,
        tensors: dict[str, tuple[tuple[int, ...], np.dtype]],
        metadata=None,
        scratch=None,
    ):
        """`scratch`: the folder to write the file in before it is copied to `path`
        (`genies.scratch.choose_scratch`, which checks its room); None: beside `path`."""
        header, offset = {}, 0
        for name, (shape, dtype) in tensors.items():
            dtype = np.dtype(dtype)
            size = int(np.prod(shape)) * dtype.itemsize
            header[name] = {
                "dtype": _DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        if metadata:
            header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._atomic = atomic_path(path, scratch=scratch)
        self._tmp = self._atomic.__enter__()
        with open(self._tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            f.truncate(8 + len(raw) + offset)
        self.arrays = {}
        for name, (shape, dtype) in tensors.items():
            start = 8 + len(raw) + header[name]["data_offsets"][0]
            if int(np.prod(shape)) == 0:
                self.arrays[name] = np.zeros(shape, dtype)
            else:
                self.arrays[name] = np.memmap(
                    self._tmp, dtype=dtype, mode="r+", offset=start, shape=shape
                )

    def write(self, name: str, rows, values) -> None:
        self.arrays[name][rows] = values

    def close(self) -> None:
        """Flush and rename into place."""
        for arr in self.arrays.values():
            if isinstance(arr, np.memmap):
                arr.flush()
        self.arrays = {}
        self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        self.arrays = {}
        self._atomic.__exit__(RuntimeError, None, None)


class ActivationCapture:
    """Hooks that copy last-token activations of selected rows into writer arrays.

    Hooks sit on every decoder layer (`resid`) and every `o_proj` (`heads`); which of them
    record, and into which array, is set per scoring pass with `target`, so one model load
    serves several stimuli and splits. A `resid` target may hold a subset of the layers.
    """

    def __init__(self, model, n_heads: int):
        self.n_heads = n_heads
        self._rows = None
        self._pos = None
        self._targets: dict[str, tuple[np.ndarray, dict[int, int]]] = {}
        self._handles = []
        for i, layer in enumerate(decoder_layers(model)):
            self._handles.append(layer.register_forward_pre_hook(self._hook("resid", i)))
            proj = _head_projection(layer)
            self._handles.append(proj.register_forward_pre_hook(self._hook("heads", i)))

    def target(self, heads=None, resid=None, resid_layers=None) -> None:
        """Arrays the next passes write into: heads [rows, layers, heads, dim] (all layers),
        resid [rows, len(resid_layers), hidden] (`resid_layers` None: all layers)."""
        self._targets = {}
        if heads is not None:
            self._targets["heads"] = (heads, {i: i for i in range(heads.shape[1])})
        if resid is not None:
            layers = range(resid.shape[1]) if resid_layers is None else resid_layers
            self._targets["resid"] = (resid, {layer: j for j, layer in enumerate(layers)})

    def _hook(self, name: str, layer: int):
        def hook(module, args, kwargs=None):
            if self._pos is None or name not in self._targets:
                return
            array, columns = self._targets[name]
            if layer not in columns:
                return
            x = args[0] if args else kwargs["hidden_states"]
            # with a device map the layers live on different devices: follow the tensor
            picked = x[torch.arange(x.shape[0], device=x.device), self._pos.to(x.device)]
            picked = picked.to(torch.float16).cpu().numpy()
            if name == "heads":
                picked = picked.reshape(picked.shape[0], self.n_heads, -1)
            array[self._rows, columns[layer]] = picked

        return hook

    def capture(self, rows: np.ndarray, positions: torch.Tensor):
        """Record the next forward call: batch row j is output row `rows[j]`, at `positions[j]`."""
        self._rows, self._pos = np.asarray(rows), positions
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._rows = self._pos = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def load_activations(path) -> dict[str, np.ndarray]:
    return load_file(str(path))
