"""Pretend GPUs on a CPU-only machine, with real arithmetic: a device-mismatch harness.

`FakeDevices()` is a TorchDispatchMode. Inside it a tensor "on" a pretend GPU (`fakegpu:0`,
`fakegpu:1`) is an `OnDevice` wrapper: it reports that device, holds a real CPU tensor, and every
aten op on it runs for real on the CPU (the same numbers as a CPU run). Before running an op the
mode applies PyTorch's device rules and raises `DeviceMismatch` (a RuntimeError with PyTorch's
own wording) where a run over several GPUs would fail:

* all tensor operands of an op must be on one device, except 0-dim CPU tensors (CPU scalars mix
  with anything, as in TensorIterator);
* indexing (`x[idx]`, `x[mask]`, `index_put_`) takes indices on the CPU or on `x`'s device;
* `copy_` copies across devices; `.to(device)` and `torch.*(device=...)` factories create
  tensors on the pretend device; `.cpu()` gives a plain CPU tensor.

accelerate's own `dispatch_model` and `attach_align_device_hook_on_blocks` run unchanged inside
the mode, so a model is spread exactly as `from_pretrained(device_map=...)` spreads it.

Why "fakegpu" and not "cuda": "fakegpu" is PyTorch's Python PrivateUse1 backend
(`torch.utils.backend_registration._setup_privateuseone_for_python_backend`), which registers a
device guard. A CPU-only PyTorch has no CUDA device guard: a tensor claiming `cuda` (such a
wrapper, or FakeTensorMode's) fails on Python indexing ("PyTorch is not linked with support for
cuda devices") and the autograd engine aborts the process on its first CUDA tensor.

Autograd: the engine sizes its per-device queues at the process's first backward pass, and the
Python backend only gets index 0 there: backward passes work on `fakegpu:0` (with the real CPU as
the second device), provided `register()` ran before any backward pass of the process
(tests/conftest.py calls it after collection when a test uses the harness; it runs a first
backward, and returns whether that worked). Inference can use `fakegpu:0` and `fakegpu:1`.

Placement (`split_map`, `attach_hooks`): a map like accelerate's "balanced" one, and accelerate's
hooks without offload (what `dispatch_model` does for a map over GPUs, also when one of the
devices is the CPU). bench/gpu_check.py spreads its models with them on a real GPU; importing
this module has no side effects.

The harness relies on private PyTorch APIs (`MISSING` lists those this PyTorch lacks; the tests
skip only then). Verified with torch 2.13.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._pytree import tree_flatten, tree_map

VERIFIED_TORCH = "2.13"
KIND = "fakegpu"
CPU = torch.device("cpu")


def _missing_apis() -> list[str]:
    """The private PyTorch APIs the harness needs that this PyTorch does not have."""
    import torch.utils._python_dispatch as python_dispatch
    import torch.utils.backend_registration as registration

    wanted = [
        (registration, "_setup_privateuseone_for_python_backend"),
        (registration, "_DummyBackendModule"),
        (registration, "_DummyPrivateUse1Hook"),
        (python_dispatch, "TorchDispatchMode"),
        (python_dispatch, "return_and_correct_aliasing"),
        (torch._C, "_get_privateuse1_backend_name"),
        (torch._C, "_only_lift_cpu_tensors"),
        (torch._C, "_set_only_lift_cpu_tensors"),
        (torch._C, "DisableTorchFunctionSubclass"),
        (torch.Tensor, "_make_wrapper_subclass"),
        (torch, "accelerator"),
    ]
    return [f"{m.__name__}.{name}" for m, name in wanted if not hasattr(m, name)]


MISSING = _missing_apis()
#: Why the harness cannot run here (None: it can).
UNAVAILABLE = (
    f"torch {torch.__version__} lacks the private APIs the fake-device harness uses "
    f"({', '.join(MISSING)}); it was verified with torch {VERIFIED_TORCH}"
    if MISSING
    else None
)
if not MISSING:
    from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing
else:  # the module still imports; every test that needs it skips with UNAVAILABLE
    TorchDispatchMode = object

aten = torch.ops.aten
# ops whose `indices` (argument 1) may stay on the CPU while `self` is elsewhere
_INDEX_OPS = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
    aten._unsafe_index.Tensor,
}


class DeviceMismatch(RuntimeError):
    """What a run over several GPUs raises here (PyTorch's own message)."""


def _fake(dev: torch.device) -> bool:
    return dev.type not in ("cpu", "meta")


class OnDevice(torch.Tensor):
    """A real CPU tensor (`elem`) that reports a pretend device."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, device=None, requires_grad: bool = False):
        if device is None:
            # `type(param)(data, requires_grad=...)`, as accelerate re-creates a parameter: a
            # parameter of a wrapper subclass is an instance of the subclass
            return torch.nn.Parameter(elem, requires_grad=requires_grad)
        r = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.shape,
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=torch.device(device),
            requires_grad=requires_grad,
        )
        r.elem = elem
        return r

    def __repr__(self, *, tensor_contents=None):
        return f"OnDevice({self.elem!r}, device='{self.device}')"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {}, None)


def _unwrap(x):
    return x.elem if isinstance(x, OnDevice) else x


def _wrap_to(dev: torch.device):
    def wrap(x):
        if isinstance(x, torch.Tensor) and not isinstance(x, OnDevice) and _fake(dev):
            return OnDevice(x, dev)
        return x

    return wrap


def _result_device(func, args, kwargs) -> torch.device:
    """Where `func`'s result lives, by PyTorch's rules; raises DeviceMismatch where they fail."""
    if func is aten._to_copy.default:
        device = kwargs.get("device")
        return torch.device(device) if device is not None else args[0].device
    if func is aten.copy_.default:
        return args[0].device  # copies cross devices
    operands = list(tree_flatten((args, kwargs))[0])
    if func in _INDEX_OPS:
        self_dev = args[0].device
        for t in tree_flatten(args[1])[0]:
            if isinstance(t, torch.Tensor) and t.device not in (CPU, self_dev):
                raise DeviceMismatch(
                    f"indices should be either on cpu or on the same device as the indexed "
                    f"tensor ({self_dev}) (fakedev: in {func}, indices on {t.device})"
                )
        operands = [args[0], *tree_flatten((args[2:], kwargs))[0]]
    devices = []
    for t in operands:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        if t.device == CPU and t.dim() == 0:  # CPU scalars mix with anything
            continue
        if t.device not in devices:
            devices.append(t.device)
    if len(devices) > 1:
        raise DeviceMismatch(
            f"Expected all tensors to be on the same device, but found at least two devices, "
            f"{devices[0]} and {devices[1]}! (fakedev: in {func})"
        )
    if kwargs.get("device") is not None:
        return torch.device(kwargs["device"])
    if devices:
        return devices[0]
    # only CPU scalars (or nothing): a pretend-GPU scalar keeps its device
    fakes = [t.device for t in operands if isinstance(t, OnDevice)]
    return fakes[0] if fakes else CPU


def _dispatch(func, args, kwargs, mode):
    if mode is not None:
        mode.ops[func] += 1
    if func.overloadpacket is aten.to:  # reaches us when called from C++ (not decomposed)
        return _dispatch_to(func, args, kwargs, mode)
    target = _result_device(func, args, kwargs)
    if mode is not None:
        mode.devices_seen.add(str(target))
    # run it for real on the CPU
    run_kwargs = dict(kwargs)
    if _fake(target) and run_kwargs.get("device") is not None:
        run_kwargs["device"] = CPU
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, run_kwargs))
    wrapped = any(isinstance(a, OnDevice) for a in tree_flatten((args, kwargs))[0])
    if not _fake(target):  # a plain CPU result (e.g. `.cpu()` of a pretend-GPU tensor)
        if wrapped and func is not aten._to_copy.default:
            return return_and_correct_aliasing(func, args, kwargs, out)
        return out
    if (
        torch.is_inference_mode_enabled()
        and func.is_view
        and isinstance(args[0], torch.Tensor)
        and not args[0].is_inference()
    ):
        # a view of a normal tensor stays a normal tensor under inference mode (autograd
        # then sets its version counter, which an inference tensor does not have)
        with torch.inference_mode(False):
            out = tree_map(_wrap_to(target), out)
    else:
        out = tree_map(_wrap_to(target), out)
    return return_and_correct_aliasing(func, args, kwargs, out) if wrapped else out


def _dispatch_to(func, args, kwargs, mode):
    src, rest = args[0], list(args[1:])
    device = dtype = None
    copy = kwargs.get("copy", False)
    if func is aten.to.device:  # (self, device, dtype, non_blocking, copy, memory_format)
        device, dtype = rest[0], rest[1]
        copy = rest[3] if len(rest) > 3 else copy
    elif func is aten.to.dtype:  # (self, dtype, non_blocking, copy, memory_format)
        dtype = rest[0]
        copy = rest[2] if len(rest) > 2 else copy
    elif func is aten.to.other:  # (self, other, non_blocking, copy, memory_format)
        device, dtype = rest[0].device, rest[0].dtype
        copy = rest[2] if len(rest) > 2 else copy
    else:  # to.dtype_layout: keywords
        device, dtype = kwargs.get("device"), kwargs.get("dtype")
    device = torch.device(device) if device is not None else src.device
    dtype = dtype if dtype is not None else src.dtype
    if device == src.device and dtype == src.dtype and not copy:
        return src
    return _dispatch(aten._to_copy.default, (src,), {"dtype": dtype, "device": device}, mode)


_ACTIVE = [0]  # open FakeDevices contexts
_AUTOGRAD_OK: list[bool] = []  # set by register(): whether backward passes work on fakegpu:0


def register() -> bool:
    """Register PyTorch's Python PrivateUse1 backend as "fakegpu" and run the process's first
    backward pass with it; returns whether backward passes work on fakegpu:0 (False when a
    backward pass ran before). Once per process; call it before any backward pass."""
    if _AUTOGRAD_OK:
        return _AUTOGRAD_OK[0]
    # The autograd engine sizes its per-device queues once, at the process's first backward
    # pass, from each backend's device count (0 for "fakegpu" while no FakeDevices is open):
    # run that first backward here, with fakegpu available.
    with FakeDevices():
        w = torch.zeros(1).to(f"{KIND}:0").requires_grad_()
        try:
            (w * 2).sum().backward()
            _AUTOGRAD_OK.append(True)
        except RuntimeError:  # a backward pass ran before
            _AUTOGRAD_OK.append(False)
    return _AUTOGRAD_OK[0]


def _backend() -> None:
    """PyTorch's Python PrivateUse1 backend named "fakegpu" (autograd needs a device guard),
    available only while a FakeDevices context is open."""
    if MISSING:
        raise RuntimeError(UNAVAILABLE)
    if torch._C._get_privateuse1_backend_name() == KIND:
        return
    from torch.utils.backend_registration import (
        _DummyBackendModule,
        _DummyPrivateUse1Hook,
        _setup_privateuseone_for_python_backend,
    )

    class Hook(_DummyPrivateUse1Hook):
        def is_available(self) -> bool:
            return _ACTIVE[0] > 0

        def device_count(self) -> int:
            return 2 if _ACTIVE[0] > 0 else 0

        def deviceCount(self) -> int:  # noqa: N802 (PyTorch's name)
            return self.device_count()

    class Backend(_DummyBackendModule):
        def is_available(self) -> bool:
            return _ACTIVE[0] > 0

        def device_count(self) -> int:
            return 2 if _ACTIVE[0] > 0 else 0

        def get_amp_supported_dtype(self):
            return [torch.float16, torch.bfloat16]

        def is_bf16_supported(self) -> bool:
            return True

    _setup_privateuseone_for_python_backend(KIND, backend_module=Backend(), hook=Hook())


def autograd_ok() -> bool:
    """Whether backward passes work on fakegpu:0 (`register` ran before any backward pass)."""
    return bool(_AUTOGRAD_OK and _AUTOGRAD_OK[0])


class FakeDevices(TorchDispatchMode):
    """The harness (module docstring); `devices(n)` names its pretend GPUs."""

    def __init__(self):
        _backend()
        super().__init__()
        self.ops: Counter = Counter()
        self.devices_seen: set[str] = set()

    @staticmethod
    def devices(n: int, last_on_cpu: bool = False) -> list[torch.device]:
        """`n` devices: pretend GPUs 0..n-1, or with `last_on_cpu` GPUs 0..n-2 and the CPU
        (what training needs: autograd only runs on index 0 of a Python backend)."""
        gpus = [torch.device(KIND, i) for i in range(n - 1 if last_on_cpu else n)]
        return gpus + [CPU] if last_on_cpu else gpus

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {}, self)

    def __enter__(self):
        # torch.tensor(data, device=...) builds on the CPU, then moves under the mode
        self._prev_lift = torch._C._only_lift_cpu_tensors()
        torch._C._set_only_lift_cpu_tensors(True)
        # accelerate empties the accelerator's cache after moving each weight; a Python
        # backend has no caching allocator
        self._prev_empty = torch.accelerator.empty_cache
        torch.accelerator.empty_cache = lambda: None
        _ACTIVE[0] += 1
        return super().__enter__()

    def __exit__(self, *exc):
        torch._C._set_only_lift_cpu_tensors(self._prev_lift)
        torch.accelerator.empty_cache = self._prev_empty
        _ACTIVE[0] -= 1
        return super().__exit__(*exc)


def record_inputs(model):
    """A context: {module name: [devices of the tensors its forward received]} for every
    module with an accelerate hook (what the hooks hand each block), while it is open."""
    import contextlib

    @contextlib.contextmanager
    def recording():
        seen: dict[str, list[str]] = {}
        handles = []

        def hook(name):
            def pre(module, args, kwargs):
                flat = tree_flatten((args, kwargs))[0]
                devs = sorted({str(t.device) for t in flat if isinstance(t, torch.Tensor)})
                seen.setdefault(name, []).append(",".join(devs))

            return pre

        for name, m in model.named_modules():
            if getattr(m, "_hf_hook", None) is not None or name == "":
                handles.append(m.register_forward_pre_hook(hook(name or "<top>"), with_kwargs=True))
        try:
            yield seen
        finally:
            for h in handles:
                h.remove()

    return recording()


# --------------------------------------------------------------------------- placement


def split_map(model, first, last) -> dict[str, str]:
    """A device map like accelerate's "balanced" one over two devices for a Llama-style causal
    LM or classifier: the embeddings (and rotary embedding) and the first half of the decoder
    layers on `first`, the other half, the final norm and the head (`lm_head` or `score`) on
    `last`."""
    prefix = model.base_model_prefix
    base = getattr(model, prefix)
    n_layers = len(base.layers)
    half = max(1, n_layers // 2)
    device_map = {f"{prefix}.embed_tokens": first}
    if hasattr(base, "rotary_emb"):
        device_map[f"{prefix}.rotary_emb"] = first
    for i in range(n_layers):
        device_map[f"{prefix}.layers.{i}"] = first if i < half else last
    device_map[f"{prefix}.norm"] = last
    for head in ("lm_head", "score"):
        if hasattr(model, head):
            device_map[head] = last
    return {name: str(device) for name, device in device_map.items()}


def attach_hooks(model, device_map: dict) -> None:
    """Spread `model` over `device_map` with accelerate's hooks and nothing offloaded: each
    block's weights on its device, its inputs moved there, the model's outputs brought back to
    the first input's device. This is what `accelerate.dispatch_model` does for a map over
    GPUs; `dispatch_model` itself treats a CPU entry as offload (the CPU's blocks then compute
    on the main device, where every tensor meets), so a map with the CPU needs this."""
    from accelerate.hooks import attach_align_device_hook_on_blocks

    device_map = {name: str(device) for name, device in device_map.items()}
    first = next(iter(device_map.values()))
    with torch.no_grad():
        attach_align_device_hook_on_blocks(
            model,
            execution_device={**device_map, "": first},
            offload=dict.fromkeys(device_map, False),  # not "": its hook places nothing
            offload_buffers=False,
            weights_map=None,
            skip_keys=getattr(model, "_skip_keys_device_placement", None),
        )
    model.hf_device_map = dict(device_map)
