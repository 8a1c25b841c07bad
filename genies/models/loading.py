"""Loading prepared model directories (`genies.models.prepare`) for scoring and training.

`load_model(model_dir, device, dtype)` loads a prepared (or any plain HF) directory in eval mode.
With ``gpus=N > 1`` the model is spread over N GPUs of the node by accelerate's device map (whole
decoder layers per GPU, balanced, each GPU filled to at most `genies.models.layout.WEIGHT_SHARE` of
its memory, never offloaded to the CPU or disk); `LoadedModel.device` is then where inputs go (the
embeddings' GPU). An explicit `device_map` (accelerate's format, "disk" entries need
`offload_folder`) places modules by hand: the tests use it to spread a model over the CPU and disk
offload, which runs through the same accelerate hooks as several GPUs. Dtype policy
(`resolve_dtype`): "auto" is bfloat16 on CUDA when supported (else float16), and on CPU bfloat16
only when the CPU has native bf16 instructions (else float32). An explicit "float16" on CPU is an
error (slow and numerically fragile there; use bfloat16 or float32).
"""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from genies.data.chat import mark
from genies.errors import GeniesError
from genies.io import MODEL_INFO_FILE, RunRecord, read_model_info  # noqa: F401 - re-exported
from genies.models.context import max_positions
from genies.models.layout import LINK_FILE, WEIGHT_SHARE, model_layout, weights_folder
from genies.models.sources import model_files_problem
from genies.versions import MODEL_PACKAGES, check_versions

SENTENCEPIECE_FILE = "tokenizer.model"
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
QUANTIZATIONS = ("nf4",)


class ModelError(GeniesError, ValueError):
    """A model spec, model directory or device/dtype request is invalid or cannot be honoured."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object  # a transformers fast tokenizer (PreTrainedTokenizerFast)
    device: torch.device
    dtype: torch.dtype
    model_dir: Path | None = None
    quantization: str | None = None
    device_map: dict | None = None  # module -> device, when spread by accelerate

    @property
    def layout(self) -> dict:
        return model_layout(self.model)

    def placement(self) -> dict | None:
        """The device map as a job's provenance records it (None: on one device)."""
        if self.device_map is None:
            return None
        return {str(k): str(v) for k, v in self.device_map.items()}


def load_model(
    model_dir,
    device="auto",
    dtype="auto",
    quantization: str | None = None,
    gpus: int = 1,
    device_map: dict | None = None,
    offload_folder=None,
    task: str = "causal_lm",
) -> LoadedModel:
    """Load a prepared model directory (or any HF directory with safetensors) in eval mode.

    `task` is "causal_lm" (a language model) or "sequence_classification" (a reward model's
    classifier, `genies.methods.own_reward_models`). A model whose registry entry asks for its chat
    template (`chat_template: true`, recorded in genies_model.json) gets its tokenizer marked for it
    (`genies.data.chat.mark`).

    `quantization="nf4"` loads the weights as bitsandbytes 4-bit NF4 (double quantisation,
    compute in the resolved dtype); it works on CUDA and, with bitsandbytes >= 0.48, on CPU.
    `gpus` > 1 spreads the model over that many GPUs (from `device`'s index on); `device_map`
    places modules explicitly (see the module docstring). The tokenizer's `model_max_length`
    is set to the model's context (`genies.models.context.max_positions`). Packages older than
    genies declares (`genies.versions`) fail first, naming what to upgrade.
    """
    check_versions(MODEL_PACKAGES + (("bitsandbytes",) if quantization == "nf4" else ()))
    from transformers import AutoTokenizer

    model_class = auto_class(task)

    model_dir = Path(model_dir)
    weights_dir = resolve_model_dir(model_dir)
    dev = resolve_device(device)
    if device_map is not None:
        dev = resolve_device(_first_device(device_map))
    torch_dtype = resolve_dtype(dtype, dev)
    if quantization in (None, "none"):
        quantization = None
    elif quantization not in QUANTIZATIONS:
        raise ModelError(
            f"unknown quantization {quantization!r}; allowed: none, {', '.join(QUANTIZATIONS)}"
        )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(model_dir), trust_remote_code=False)
    check_fast(tokenizer, weights_dir)

    kwargs = {
        "dtype": torch_dtype,
        "trust_remote_code": False,
        "use_safetensors": True,
        "device_map": {"": _device_map_target(dev)},
    }
    if device_map is not None:
        kwargs["device_map"] = dict(device_map)
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    elif gpus != 1:
        kwargs.update(device_map="balanced", max_memory=gpu_max_memory(dev, gpus))
    if quantization == "nf4":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelError("quantization 'nf4' needs bitsandbytes: pip install bitsandbytes")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype,
        )
    try:
        try:
            model = model_class.from_pretrained(weights_dir, attn_implementation="sdpa", **kwargs)
        except ValueError as exc:  # an architecture without SDPA support: use its default
            if "sdpa" not in str(exc) and "scaled_dot_product" not in str(exc):
                raise
            model = model_class.from_pretrained(weights_dir, **kwargs)
    except ValueError as exc:
        if device_map is None and gpus != 1 and ("offload" in str(exc) or "disk" in str(exc)):
            raise _too_big(weights_dir, gpus) from exc
        raise
    placed = getattr(model, "hf_device_map", None)
    if device_map is None and gpus != 1:
        off = sorted({str(v) for v in placed.values()} & {"cpu", "disk"}) if placed else []
        if off:
            raise _too_big(weights_dir, gpus)
    model.eval()
    ensure_pad_token(tokenizer, model)
    mark(tokenizer, registry_spec(model_dir).get("chat_template", False))
    limit = max_positions(model, tokenizer)
    if limit is not None:
        tokenizer.model_max_length = limit
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=input_device(model) if placed else dev,
        dtype=torch_dtype,
        model_dir=model_dir,
        quantization=quantization,
        device_map=dict(placed) if placed else None,
    )


def gpu_max_memory(device: torch.device, gpus: int) -> dict[int, int]:
    """accelerate's `max_memory` for `gpus` GPUs from `device`'s index: a share of each."""
    if device.type != "cuda":
        raise ModelError(f"gpus: {gpus} needs CUDA devices, but the device is {device}")
    first = device.index or 0
    visible = torch.cuda.device_count()
    if gpus < 1 or first + gpus > visible:
        raise ModelError(
            f"the model asks for {gpus} GPUs from cuda:{first} but {visible} are visible; "
            f"request {gpus} GPUs for the job (registry 'gpus') or lower 'gpus'"
        )
    return {
        i: int(WEIGHT_SHARE * torch.cuda.get_device_properties(i).total_memory)
        for i in range(first, first + gpus)
    }


def _too_big(weights_dir, gpus: int) -> ModelError:
    return ModelError(
        f"the model in {weights_dir} does not fit on {gpus} GPUs with {WEIGHT_SHARE:.0%} of "
        f"each for weights; raise 'gpus' for this model in the registry (or set "
        f"memory.gpu_memory_gb to the GPUs' real size)"
    )


def _first_device(device_map: dict) -> str:
    first = next((v for v in device_map.values() if str(v) != "disk"), "cpu")
    return f"cuda:{first}" if isinstance(first, int) else str(first)


def input_device(model) -> torch.device:
    """Where a dispatched model's inputs go: the execution device of its input embeddings."""
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)
    target = getattr(hook, "execution_device", None)
    if target is None:
        target = embeddings.weight.device
    if isinstance(target, int):
        target = f"cuda:{target}"
    return torch.device(target)


def resolve_model_dir(model_dir) -> Path:
    """The directory holding the weights: `model_dir`, or the target of its link file."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model directory {model_dir} does not exist; prepare the model first")
    target = weights_folder(model_dir)
    if target != model_dir:
        if not target.is_dir():
            raise ModelError(f"{model_dir / LINK_FILE} points at {target}, which no longer exists")
        return target
    if not any(model_dir.glob("*.safetensors")):
        files = sorted(p.name for p in model_dir.iterdir())
        raise ModelError(f"model directory {model_dir} has no *.safetensors; files: {files}")
    return model_dir


def check_model_files(files, where: str, pickle_advice: str) -> None:
    """Refuse a model's file list (top-level names) that `genies.models.sources.model_files_problem`
    finds a problem with."""
    problem = model_files_problem(files, where, pickle_advice)
    if problem:
        raise ModelError(problem)


def sentencepiece_only(folder) -> bool:
    """Whether `folder`'s tokenizer is a tokenizer.model without a tokenizer.json (LLaMA-1
    checkpoints): preparation converts it (`genies.models.sentencepiece_tokenizer`)."""
    folder = Path(folder)
    return (folder / SENTENCEPIECE_FILE).is_file() and not (folder / "tokenizer.json").is_file()


def tokenizer_dir(model_dir) -> Path:
    """Where a prepared model's tokenizer is: the directory itself when it holds a
    tokenizer.json (a linked model whose sentencepiece tokenizer preparation converted), else
    the folder of its weights."""
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").is_file():
        return model_dir
    folder = resolve_model_dir(model_dir)
    if sentencepiece_only(folder):
        raise ModelError(
            f"the tokenizer of {model_dir} is only a sentencepiece {SENTENCEPIECE_FILE}, which "
            f"model preparation converts to a tokenizer.json; prepare the model again "
            f"(snakemake --forcerun prepare_model, or genies.models.prepare.prepare_model)"
        )
    return folder


TASKS = ("causal_lm", "sequence_classification")


def auto_class(task: str):
    import transformers

    if task not in TASKS:
        raise ModelError(f"unknown model task {task!r}; allowed: {', '.join(TASKS)}")
    name = "AutoModelForCausalLM" if task == "causal_lm" else "AutoModelForSequenceClassification"
    return getattr(transformers, name)


def is_sequence_classifier(config) -> bool:
    """Whether a model config is a sequence classifier's (e.g. LlamaForSequenceClassification)."""
    return any(a.endswith("ForSequenceClassification") for a in config.architectures or ())


def registry_spec(model_dir) -> dict:
    """The registry entry a prepared model directory was made from ({} for a plain HF one)."""
    return read_model_info(model_dir).get("spec", {})


PROVENANCE_KEYS = ("source", "repo", "revision", "commit", "path", "gguf_file")


def model_provenance(model_dir) -> dict:
    """Where a prepared model came from, for the runs that use it (`genies.io.RunRecord`): its
    source and, for a Hub model, the repository, the configured revision and the commit it
    resolved to at preparation; a local model's path. {} for a plain HF directory."""
    description = read_model_info(model_dir).get("description", {})
    return {key: description[key] for key in PROVENANCE_KEYS if key in description}


def model_run(job: str, model_name: str, model_dir, **fields) -> RunRecord:
    """The provenance record of a job that loads the prepared model `model_dir`: its `models`
    name where the model came from (a Hub model's commit)."""
    return RunRecord(
        job, model=model_name, models={model_name: model_provenance(model_dir)}, **fields
    )


def _device_map_target(dev: torch.device):
    if dev.type == "cuda":
        return dev.index if dev.index is not None else torch.cuda.current_device()
    return dev.type


def check_fast(tokenizer, where) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"the tokenizer in {where} is not a fast (tokenizers) tokenizer; "
            f"add a tokenizer.json (e.g. by preparing the model without 'link')"
        )


def ensure_pad_token(tokenizer, model=None) -> None:
    """Make sure the tokenizer (and model config) has a pad token: pad = eos when missing."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError("tokenizer has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        gen = getattr(model, "generation_config", None)
        if gen is not None and getattr(gen, "pad_token_id", None) is None:
            gen.pad_token_id = tokenizer.pad_token_id


def resolve_device(device="auto") -> torch.device:
    """ "auto" -> cuda if available else cpu; "cpu", "cuda" or "cuda:N" explicitly."""
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelError(
                f"device {device!r} requested but CUDA is not available here "
                f"(torch {torch.__version__}); use device 'cpu' or 'auto'"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                f"device(s) are visible"
            )
        return dev
    raise ModelError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def resolve_dtype(dtype="auto", device="cpu") -> torch.dtype:
    """The torch dtype for `dtype` ("auto", "float32", "bfloat16", "float16") on `device`.

    "auto": bfloat16 on CUDA if supported else float16; on CPU bfloat16 if the CPU has native
    bf16 instructions (`cpu_has_native_bf16`) else float32. "float16" on CPU is refused.
    """
    dev = device if isinstance(device, torch.device) else torch.device(str(device))
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        name = str(dtype).strip().lower().removeprefix("torch.")
        if name == "auto":
            if dev.type == "cuda":
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        if name not in DTYPES:
            raise ModelError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        resolved = DTYPES[name]
    if resolved not in (torch.float32, torch.bfloat16, torch.float16):
        raise ModelError(f"unsupported model dtype {resolved}")
    if resolved == torch.float16 and dev.type == "cpu":
        raise ModelError(
            "dtype float16 on CPU is refused (slow and numerically fragile there); "
            "use bfloat16 or float32, or 'auto'"
        )
    return resolved


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and instruction-set flags, from /proc/cpuinfo.

    ("", set()) where /proc/cpuinfo cannot be read (not Linux).
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return name, flags


def cpu_has_native_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (x86 AVX512-BF16/AMX-BF16, Arm BF16).

    Read from /proc/cpuinfo on Linux; elsewhere (or if unreadable) False, i.e. float32.
    """
    if platform.system() != "Linux" or not torch.backends.mkldnn.is_available():
        return False
    return bool(cpu_info()[1] & {"avx512_bf16", "amx_bf16", "bf16"})
