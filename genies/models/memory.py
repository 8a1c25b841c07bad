"""Memory model of a model job: the budget, what each batch holds, and the batch plan.

Budget (`Budget.resolve`, config section ``memory``). The working memory a job may use above
its loaded weights. On CUDA it is the free memory of the model's GPUs after loading, less
``margin_gb`` (N GPUs: N x the smallest free share, as the layers and so the KV cache and the
activations are spread evenly), capped by ``budget_gb`` when set. On the CPU it is
``budget_gb``; unset means unlimited, and every batch is then sized as it always was (the
``batch_tokens``, ``micro_batch_size`` and ``eval_batch_size`` settings). Each retry of a job
(Snakemake's ``attempt``) halves the budget and those caps once more. The planners fill
``Budget.usable``, the budget divided by the allocator's overhead (`ALLOCATOR_OVERHEAD`).

Costs, in bytes (`Shape`: layers L, hidden h, heads n_h, KV heads n_kv, head size d,
intermediate i, vocabulary V; b bytes per element):

- weights: `genies.models.layout.weight_bytes` (from the safetensors headers; NF4 ~0.52 byte per
  parameter of the decoder blocks' linear layers, embeddings, LM head and norms unquantised);
- KV cache: ``2 L n_kv d b`` per position;
- scoring (`ScoringCosts`): a prompt pass holds the batch's cache, one layer's temporaries
  and the kept logits; a response call adds a copy of the prompt-cache rows it continues from
  (grown by its new positions), the repeated K/V of one layer, the attention mask and its
  logits ``[positions, V]``, and the float32 log-softmax chunks;
- training (`TrainingCosts`): per token, the tensors autograd saves in each layer (norm
  inputs in float32, q/k/v/attention output, the float attention mask, three MLP
  intermediates, each LoRA input, its dropout mask and rank-r output), one more layer of
  temporaries, and with gradient checkpointing only each layer's input plus one recomputed
  layer; the trainable parameters' gradients and AdamW state (16 bytes per parameter).
  A 4-bit base runs its activations in float32 (peft's k-bit preparation upcasts the
  unquantised weights); bf16 autocast then halves the attention and LoRA inputs. Under the
  math attention kernel (deterministic training on CUDA, `genies.methods.tuned.training`)
  each layer also keeps its attention probabilities ``[heads, L, L]`` per sequence and
  float32 copies of q, k and v (the kernel computes in float32), and a no-grad call holds
  two float32 ``[heads, L, L]`` matrices of one layer at a time.

Plans. The scorer gets one ``batch_tokens`` (`ScoringCosts.batch_tokens`): the prompt pass,
its k cache copies and a response call of that many positions must fit. Training gets
`RewardModelPlan`: micro-batches of pairs cut by `plan_groups` (length-bucketed, fewest padded
positions) so that each fits, gradient checkpointing when the longest pair does not fit
without it (or only in tiny micro-batches), and row limits for validation and prediction.

Out of memory (`is_out_of_memory`): callers catch it, `release_memory()`, halve their batch
and go on from where they were; the back-off is noted in the budget's record. A single row
that does not fit fails with `out_of_memory_message`'s text.

``bench/bench_memory.py --table`` prints the planned memory of LLaMA shapes (docs/memory.md).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from genies.errors import GeniesError
from genies.models.layout import decoder_layers, loaded_bytes, model_layout

log = logging.getLogger(__name__)

GIB = 2**30
DEFAULTS = {"budget_gb": None, "margin_gb": 2.0, "gpu_memory_gb": None}
# Resident bytes per byte of live tensors. CPU: glibc keeps the blocks freed by each layer's
# temporaries in its heap (fragmented, so not given back) and oneDNN caches primitives per
# shape: measured on SmolLM2 (bench/bench_memory.py), a training step's resident memory is
# 1.4-2x its live tensors, 2.8-3.3x with gradient checkpointing (which frees and re-allocates
# every layer's activations), scoring 1.6-3.3x; with glibc made to return freed memory
# (MALLOC_TRIM_THRESHOLD_=0) it is 0.95-1.15x, but the page faults halve the speed. CUDA:
# the caching allocator's fragmentation.
ALLOCATOR_OVERHEAD = {"cpu": 3.0, "cuda": 1.1}
# Bytes per trainable parameter while training: float32 gradient, AdamW's two moments, and
# the foreach update's temporaries.
TRAINABLE_STATE_BYTES = 16
# What `RewardModelPlan.back_off_training` returns when a single pair needs checkpointing.
CHECKPOINTING_ON = "gradient checkpointing on"
# Micro-batches of fewer tokens than this turn gradient checkpointing on when it at least
# doubles them ("auto"): each micro-batch reads all the weights, so tiny ones waste the GPU.
MIN_MICRO_BATCH_TOKENS = 4096
# Cost of one extra forward call in padded positions, when cutting rows into groups.
CALL_OVERHEAD_TOKENS = 32
# MLPs without a gate (GPT-NeoX, GPT-2, ...) save one intermediate tensor instead of three.
UNGATED_MLP = ("gpt_neox", "gpt2", "gptj", "opt", "bloom", "falcon", "phi")


class MemoryPlanError(GeniesError):
    """A batch that cannot be made smaller does not fit the memory."""


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    """The dimensions of a decoder that set its memory."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    gated_mlp: bool = True

    @classmethod
    def of(cls, model_or_config) -> Shape:
        config = getattr(model_or_config, "config", model_or_config)
        text = getattr(config, "get_text_config", None)
        config = text() if callable(text) else config
        layout = model_layout(config)
        hidden = layout["hidden_size"]
        return cls(
            num_layers=layout["num_layers"],
            hidden_size=hidden,
            num_heads=layout["num_heads"],
            num_kv_heads=layout["num_kv_heads"],
            head_dim=layout["head_dim"],
            intermediate_size=int(getattr(config, "intermediate_size", None) or 4 * hidden),
            vocab_size=int(config.vocab_size),
            gated_mlp=getattr(config, "model_type", "llama") not in UNGATED_MLP,
        )

    def layout(self) -> dict:
        """The shape as `genies.models.layout.model_layout` gives a model's."""
        keys = ("num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size")
        return {key: getattr(self, key) for key in keys}

    def kv_bytes(self, b: float) -> float:
        """KV cache bytes per position."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * b

    def parameters(self, tied: bool = False) -> int:
        """Parameter count (Llama layout)."""
        h, i = self.hidden_size, self.intermediate_size
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        mlp = (3 if self.gated_mlp else 2) * h * i
        layer = h * q + 2 * h * kv + q * h + mlp + 2 * h
        embeddings = self.vocab_size * h * (1 if tied else 2)
        return self.num_layers * layer + embeddings + h

    def weight_bytes(self, b: float, quantization: str | None = None) -> int:
        """Loaded weight bytes (Llama layout), by `genies.models.layout.loaded_bytes`: with NF4
        the decoder blocks' linear layers are 4-bit, the rest float32 (k-bit preparation)."""
        h = self.hidden_size
        rest = 2 * self.vocab_size * h + (2 * self.num_layers + 1) * h
        return loaded_bytes(self.parameters() - rest, rest, b, quantization)

    def layer_temporaries(self, b: float) -> float:
        """Bytes per position of the largest set of tensors alive inside one layer (no grad)."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        attention = (2 * (self.num_heads + 2 * self.num_kv_heads) + self.num_heads) * d * b
        mlp = (4 if self.gated_mlp else 2) * i * b
        return 2 * h * b + max(8 * h, attention, mlp)

    def repeated_kv(self, b: float) -> float:
        """Bytes per key position of one layer's K and V repeated to every head (GQA)."""
        return 0 if self.num_kv_heads == self.num_heads else 2 * self.num_heads * self.head_dim * b


def dtype_bytes(dtype) -> int:
    """Bytes per element of a torch dtype or its name ("auto" on a GPU: 2)."""
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize
    name = str(dtype).removeprefix("torch.")
    return 4 if name in ("float32", "fp32") else 2


# --------------------------------------------------------------------------- budget


@dataclass
class Budget:
    """Working memory above the loaded weights, and the plans and back-offs made under it."""

    bytes: int | None  # None: unlimited
    device: str = "cpu"
    attempt: int = 1
    source: str = "unlimited"
    events: list = field(default_factory=list)

    @classmethod
    def resolve(cls, settings: dict | None = None, device="cpu", attempt: int = 1, model=None):
        """The budget of a job whose model is loaded on `device` (its GPUs: `model`'s)."""
        settings = {**DEFAULTS, **(settings or {})}
        attempt = max(1, int(attempt or 1))
        device = torch.device(device)
        cap = settings["budget_gb"]
        cap = None if cap is None else int(float(cap) * GIB)
        if device.type == "cuda":
            gpus = _cuda_devices(model, device)
            torch.cuda.empty_cache()  # blocks cached while loading are free for the batches
            free = min(torch.cuda.mem_get_info(d)[0] for d in gpus)
            margin = int(float(settings["margin_gb"]) * GIB)
            size = len(gpus) * max(free - margin, 0)
            source = (
                f"free memory of {len(gpus)} GPU(s) after loading ({free / GIB:.1f} GiB each) "
                f"less {settings['margin_gb']} GiB"
            )
            if cap is not None and cap < size:
                size, source = cap, "memory.budget_gb"
        elif cap is not None:
            size, source = cap, "memory.budget_gb"
        else:
            size, source = None, "unlimited"
        if size is not None and attempt > 1:
            size //= 2 ** (attempt - 1)
            source += f", halved {attempt - 1}x for attempt {attempt}"
        budget = cls(size, device.type, attempt, source)
        log.info("memory budget: %s (%s)", budget.describe(), source)
        return budget

    @property
    def limited(self) -> bool:
        return self.bytes is not None

    @property
    def usable(self) -> int | None:
        """Live-tensor bytes the plans may fill: the budget over the allocator's overhead."""
        if self.bytes is None:
            return None
        return int(self.bytes / ALLOCATOR_OVERHEAD.get(self.device, 1.0))

    def cap(self, n: int | None) -> int | None:
        """A batch-size setting for this attempt: halved once per retry (at least 1)."""
        return None if n is None else max(1, int(n) >> (self.attempt - 1))

    def describe(self) -> str:
        return "unlimited" if self.bytes is None else f"{self.bytes / GIB:.2f} GiB"

    def note(self, kind: str, **fields) -> dict:
        """Record a plan or a back-off (and log it)."""
        event = {"kind": kind, **fields}
        self.events.append(event)
        logger = log.warning if kind == "backoff" else log.info
        logger("memory %s: %s", kind, ", ".join(f"{k}={v}" for k, v in fields.items()))
        return event

    def record(self) -> dict:
        """What a job's provenance records of its memory."""
        return {
            "device": self.device,
            "budget_bytes": self.bytes,
            "allocator_overhead": ALLOCATOR_OVERHEAD.get(self.device, 1.0),
            "source": self.source,
            "attempt": self.attempt,
            "events": list(self.events),
        }


def unlimited() -> Budget:
    return Budget(None)


def _cuda_devices(model, device: torch.device) -> list[torch.device]:
    if model is not None:
        found = {p.device for p in model.parameters() if p.device.type == "cuda"}
        if found:
            return sorted(found, key=lambda d: d.index or 0)
    return [device if device.index is not None else torch.device("cuda", 0)]


# --------------------------------------------------------------------------- out of memory


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, or the CPU allocator's."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def release_memory() -> None:
    """After an out-of-memory error (outside its `except` block): free what it held."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def out_of_memory_message(exc: BaseException, doing: str, advice: str) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        text = str(exc).strip()
        first = text.splitlines()[0] if text else "out of memory"
        return f"out of GPU memory while {doing} ({first}). {advice}"
    return f"out of CPU memory while {doing}. {advice}"


# --------------------------------------------------------------------------- grouping


def plan_groups(lengths: np.ndarray, max_rows: np.ndarray, call_overhead: int) -> list:
    """Cut rows sorted by decreasing length into contiguous groups (one forward call each).

    A group ``lengths[s:e]`` costs ``call_overhead + (e - s) * lengths[s]`` (padded positions
    plus a per-call overhead) and may hold at most ``max_rows[s]`` rows (at least one). The
    minimum-cost partition is found by dynamic programming; returns ``[(s, e), ...]``.
    """
    n = len(lengths)
    if n == 0:
        return []
    lens = np.asarray(lengths, dtype=np.int64)
    cap = np.maximum(np.asarray(max_rows, dtype=np.int64), 1)
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    arg = np.zeros(n + 1, dtype=np.int64)
    for e in range(1, n + 1):
        # lengths decrease, so the row caps increase: no group ending at e is longer than this
        lo = max(0, e - int(cap[e - 1]))
        s = np.arange(lo, e)
        size = e - s
        cost = best[lo:e] + call_overhead + size * lens[lo:e]
        cost[size > cap[lo:e]] = np.inf
        k = int(np.argmin(cost))
        best[e] = cost[k]
        arg[e] = lo + k
    groups = []
    e = n
    while e > 0:
        groups.append((int(arg[e]), e))
        e = int(arg[e])
    return groups[::-1]


def token_rows(lengths: np.ndarray, batch_tokens: int) -> np.ndarray:
    """Rows per group under a padded-positions limit: ``batch_tokens // length`` (>= 1)."""
    return np.maximum(batch_tokens // np.maximum(np.asarray(lengths, dtype=np.int64), 1), 1)


# --------------------------------------------------------------------------- scoring


class ScoringCosts:
    """Bytes of the zero-shot scorer's forward calls (`genies.forward.scoring`), and their peak."""

    def __init__(self, shape: Shape | None, b: float, logit_chunk_bytes: int):
        """`shape` None: a model of unknown shape; calls are counted at 0 bytes."""
        self.shape, self.b = shape, b
        known = shape is not None
        self.kv = shape.kv_bytes(b) if known else 0
        self.act = shape.layer_temporaries(b) if known else 0
        self.rep = shape.repeated_kv(b) if known else 0
        self.mask = 1 + b if known else 0  # per (query, key): the bool mask, a float copy
        self.vocab = shape.vocab_size if known else 0
        self.logit = self.vocab * b
        self.chunk = logit_chunk_bytes
        self.peak = 0
        self.rows = 0  # rows of the call in progress (an out-of-memory error names it)

    def prompt_pass(self, rows: int, width: int, kept: int) -> int:
        """Prompt pass of `rows` left-padded prompts of `width` keeping `kept` logits each."""
        n = rows * width
        size = n * (self.kv + self.act + self.rep) + n * width * self.mask
        return self._call(rows, size + 2 * rows * kept * self.logit + self._chunk(rows * kept))

    def response_call(self, batch_rows: int, prompt_width: int, rows: int, width: int) -> int:
        """A response call: `rows` rows of `width` continuing a `batch_rows` x `prompt_width`
        prompt cache (which stays alive) from their own copy of its rows."""
        keys = prompt_width + width
        size = (
            batch_rows * prompt_width * self.kv
            + rows * keys * (self.kv + self.rep)
            + rows * width * (self.act + self.logit + keys * self.mask)
        )
        return self._call(rows, size + self._chunk(rows * width))

    def _chunk(self, positions: int) -> float:
        """The float32 log-softmax of at most `self.chunk` bytes (a copy and the result)."""
        return min(self.chunk, positions * 8 * self.vocab)

    def _call(self, rows: int, size: float) -> int:
        self.rows = rows
        self.peak = max(self.peak, int(size))
        return int(size)

    def batch_tokens(self, usable: int, k: int, longest_prompt: int, longest_response: int):
        """The most positions per call such that a prompt batch, its `k` cache copies and a
        response call of that many positions fit `usable` bytes (None: they never fit)."""
        keys = longest_prompt + longest_response
        prompt = self.kv + self.act + self.rep + longest_prompt * self.mask + 2 * self.logit
        response = (k + 2) * self.kv + (k + 1) * self.rep + self.act + self.logit + keys * self.mask
        per = max(prompt, response)
        chunk_per = 8 * self.vocab  # below `chunk / chunk_per` positions the chunk is smaller
        whole_chunks = (usable - self.chunk) / per
        small_chunks = min(usable / (per + chunk_per), self.chunk / chunk_per)
        tokens = max(whole_chunks, small_chunks)
        return int(tokens) if tokens >= 1 else None


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingSetup:
    """What sets a reward model's memory besides the batch."""

    shape: Shape
    b: int  # bytes per element of the model's compute dtype
    quantized: bool = False
    autocast: bool = False
    lora_inputs: tuple = ()  # input sizes of the LoRA-adapted linear layers of one layer
    lora_rank: int = 0
    lora_dropout: float = 0.0
    virtual_tokens: int = 0
    trainable: int = 0  # trainable parameters whose gradients and AdamW state are held
    math_attention: bool = False  # the math SDPA kernel (deterministic training on CUDA)

    @classmethod
    def of(cls, model, training: bool = True, math_attention: bool = False) -> TrainingSetup:
        """The setup of a built `genies.methods.tuned.reward_model.RewardModel` (or of a
        `genies.methods.reward_classifier.ClassifierReward`, which offers the same attributes)."""
        inputs, rank, dropout = [], 0, 0.0
        for module in decoder_layers(model.lm)[0].modules():
            if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict):
                for name, lora_a in module.lora_A.items():
                    inputs.append(int(lora_a.in_features))
                    rank = int(lora_a.out_features)
                    dropout = float(getattr(module.lora_dropout[name], "p", 0.0))
        return cls(
            shape=Shape.of(model.lm),
            b=dtype_bytes(model.compute_dtype),
            quantized=model.quantized,
            autocast=model.autocast_dtype is not None,
            lora_inputs=tuple(inputs),
            lora_rank=rank,
            lora_dropout=dropout,
            virtual_tokens=model.num_virtual_tokens,
            trainable=sum(p.numel() for p in model.parameters() if p.requires_grad)
            if training
            else 0,
            math_attention=math_attention,
        )


class TrainingCosts:
    """Bytes of a training micro-batch and of a no-grad (validation, prediction) call."""

    def __init__(self, setup: TrainingSetup):
        self.setup = setup
        s = setup.shape
        # the residual stream and the MLP run in float32 on a 4-bit base (k-bit preparation)
        self.b_act = 4 if setup.quantized else setup.b
        # what attention and the adapters save: the autocast dtype under autocast
        self.b_attn = 2 if setup.autocast else self.b_act
        b_lora = 2 if setup.autocast else 4  # adapters are float32 (peft)
        lora = sum(
            d * (1 if setup.lora_dropout > 0 else 0) + d * b_lora + setup.lora_rank * b_lora
            for d in setup.lora_inputs
        )
        h, heads = s.hidden_size, s.num_heads
        if setup.math_attention:
            # the math kernel saves float32 copies of q and k (scaled) and of v, and per key
            # the float32 attention probabilities (instead of the float mask)
            attention = 3 * heads * s.head_dim * 4
            self.per_key = 4 * heads
        else:
            # the fused kernels save q, the repeated k and v, the output and the log-sum-exp,
            # and per key the float mask
            attention = 4 * heads * s.head_dim * self.b_attn + 4 * heads
            self.per_key = self.b_attn
        # per token of one layer, without what grows with the width
        self.layer_linear = (
            2 * (4 * h + 4)  # the two norms keep their float32 input and rsqrt
            + attention
            + (3 if s.gated_mlp else 1) * s.intermediate_size * self.b_act
            + lora
        )
        self.fixed = TRAINABLE_STATE_BYTES * setup.trainable

    def layer(self, width: int) -> float:
        """Saved bytes per token of one layer at padded `width`."""
        return self.layer_linear + width * self.per_key

    def train_row(self, width: int, checkpointing: bool) -> float:
        """Peak bytes of one sequence of `width` (virtual tokens added) in a training step."""
        w = width + self.setup.virtual_tokens
        s = self.setup.shape
        per_token = w  # the boolean attention mask, shared by the layers
        if checkpointing:
            per_token += s.num_layers * s.hidden_size * self.b_act + 2 * self.layer(w)
        else:
            per_token += (s.num_layers + 1) * self.layer(w) + 4 * s.hidden_size
        return w * per_token

    def eval_row(self, width: int) -> float:
        """Peak bytes of one sequence of `width` in a no-grad forward (no KV cache)."""
        w = width + self.setup.virtual_tokens
        s = self.setup.shape
        per_token = (
            s.layer_temporaries(self.b_act)
            + s.repeated_kv(self.b_attn)
            + w * (1 + self.b_attn)
            + 2 * s.hidden_size * self.b_act
        )
        if self.setup.math_attention:  # float32 q, k, v, scores and probabilities of a layer
            per_token += 3 * s.num_heads * s.head_dim * 4 + w * 8 * s.num_heads
        return w * per_token


class RewardModelPlan:
    """Micro-batches of a training step and row groups of no-grad calls (validation,
    prediction) of a reward model.

    Unlimited budget: as before the memory model, `max_pairs` pairs per micro-batch in order
    of length, `eval_rows` sequences per no-grad call. Limited: length-bucketed groups whose
    planned bytes fit (`plan_groups`), capped by the same settings. Gradient checkpointing
    ("auto") is on when the longest pair does not fit without it, or only in micro-batches of
    under `MIN_MICRO_BATCH_TOKENS` tokens that checkpointing would at least double.
    """

    def __init__(
        self,
        costs: TrainingCosts | None,
        budget: Budget,
        max_pairs: int,
        eval_rows: int,
        checkpointing="auto",
        longest_pair: int = 0,
    ):
        self.costs, self.budget = costs, budget
        self.max_pairs = budget.cap(max_pairs)
        self.eval_rows = budget.cap(eval_rows)
        usable = budget.usable if costs is not None else None
        self.activation_bytes = None if usable is None else max(usable - costs.fixed, 0)
        needed = checkpointing == "auto" and self._needs_checkpointing(longest_pair)
        self.checkpointing = checkpointing is True or needed
        self.checkpointing_allowed = checkpointing is not False
        self.backoffs = 0

    def _needs_checkpointing(self, width: int) -> bool:
        """Whether pairs of `width` need gradient checkpointing: they do not fit without it,
        or only in micro-batches of under `MIN_MICRO_BATCH_TOKENS` that it would at least
        double (each micro-batch reads all the weights, and a 4-bit base dequantises them)."""
        if self.activation_bytes is None:
            return False
        pairs = self.activation_bytes // (2 * self.costs.train_row(width, False))
        with_it = self.activation_bytes // (2 * self.costs.train_row(width, True))
        return pairs == 0 or (2 * width * pairs < MIN_MICRO_BATCH_TOKENS and with_it >= 2 * pairs)

    @classmethod
    def fixed_rows(cls, rows: int) -> RewardModelPlan:
        """`rows` sequences per no-grad call, as many as always (no memory model)."""
        return cls(None, unlimited(), 1, rows, checkpointing=False)

    @classmethod
    def fixed_pairs(cls, pairs: int) -> RewardModelPlan:
        """`pairs` pairs per micro-batch, as many as always (no memory model)."""
        return cls(None, unlimited(), pairs, 1, checkpointing=False)

    @classmethod
    def of(
        cls,
        model,
        budget: Budget,
        params: dict,
        longest_pair: int = 0,
        training=True,
        math_attention: bool = False,
    ):
        """The plan of reward model `model` under `budget` with resolved training `params`
        (`genies.methods.tuned.training.resolve_params`); `training=False`: prediction only;
        `math_attention`: attention runs in the math SDPA kernel
        (`genies.methods.tuned.training.math_attention`)."""
        costs = TrainingCosts(TrainingSetup.of(model, training, math_attention))
        checkpointing = params["gradient_checkpointing"] if training else False
        max_pairs = params["micro_batch_size"] or params["batch_size"]
        return cls(costs, budget, max_pairs, params["eval_batch_size"], checkpointing, longest_pair)

    @classmethod
    def for_prediction(cls, model, budget: Budget, rows: int) -> RewardModelPlan:
        """No-grad calls of reward model `model` of at most `rows` sequences."""
        return cls(TrainingCosts(TrainingSetup.of(model, False)), budget, 1, rows, False)

    def pair_groups(self, widths: list[int]) -> list[list[int]]:
        """Micro-batches (indices into `widths`, the longer text of each pair)."""
        if self.activation_bytes is None:
            order = sorted(range(len(widths)), key=lambda i: widths[i])
            return [order[s : s + self.max_pairs] for s in range(0, len(order), self.max_pairs)]
        order = sorted(range(len(widths)), key=lambda i: -widths[i])
        lens = np.array([widths[i] for i in order], dtype=np.int64)
        per_pair = np.array([2 * self.costs.train_row(w, self.checkpointing) for w in lens])
        rows = np.minimum(self.activation_bytes // np.maximum(per_pair, 1), self.max_pairs)
        return [order[s:e] for s, e in plan_groups(lens, rows, CALL_OVERHEAD_TOKENS)]

    def row_groups(self, lengths: np.ndarray) -> list[tuple[int, int]]:
        """No-grad calls over rows sorted by decreasing length: ``[(start, end), ...]``."""
        n = len(lengths)
        if self.activation_bytes is None:
            return [(s, min(s + self.eval_rows, n)) for s in range(0, n, self.eval_rows)]
        per_row = np.array([self.costs.eval_row(int(w)) for w in lengths])
        rows = np.minimum(self.activation_bytes // np.maximum(per_row, 1), self.eval_rows)
        return plan_groups(lengths, rows, CALL_OVERHEAD_TOKENS)

    def planned_step_bytes(self, widths: list[int]) -> int:
        """Planned peak bytes of a step's micro-batches plus the trainable state."""
        if self.costs is None:
            return 0
        peak = 0.0
        for group in self.pair_groups(widths):
            width = max(widths[i] for i in group)
            peak = max(peak, 2 * len(group) * self.costs.train_row(width, self.checkpointing))
        return int(peak + self.costs.fixed)

    def planned_rows_bytes(self, lengths: np.ndarray) -> int:
        """Planned peak bytes of the no-grad calls over `lengths` (decreasing)."""
        if self.costs is None:
            return 0
        sizes = [
            (e - s) * self.costs.eval_row(int(lengths[s])) for s, e in self.row_groups(lengths)
        ]
        return int(max(sizes, default=0))

    def back_off_training(self, failed_pairs: int) -> str | None:
        """Make micro-batches smaller after `failed_pairs` did not fit; None: nothing left."""
        if failed_pairs > 1:
            self.max_pairs = max(1, failed_pairs // 2)
            if self.activation_bytes is not None:
                self.activation_bytes //= 2
            return f"micro-batches of at most {self.max_pairs} pairs"
        if not self.checkpointing and self.checkpointing_allowed:
            self.checkpointing = True
            return CHECKPOINTING_ON
        return None

    def back_off_rows(self, failed_rows: int) -> str | None:
        """Make no-grad calls smaller after `failed_rows` did not fit; None: nothing left."""
        if failed_rows <= 1:
            return None
        self.eval_rows = max(1, failed_rows // 2)
        return f"no-grad calls of at most {self.eval_rows} sequences"

    def note_backoff(self, during: str, **fields) -> None:
        self.backoffs += 1
        self.budget.note("backoff", during=during, **fields, **self.limits())

    def limits(self) -> dict:
        return {
            "max_pairs": self.max_pairs,
            "eval_rows": self.eval_rows,
            "activation_bytes": self.activation_bytes,
            "checkpointing": self.checkpointing,
        }

    def record(self) -> dict:
        """The plan as the training record (`reward_model.json`) keeps it."""
        setup = self.costs.setup if self.costs is not None else None
        return {
            **self.limits(),
            "autocast": bool(setup and setup.autocast),
            "math_attention": bool(setup and setup.math_attention),
            "trainable_state_bytes": self.costs.fixed if self.costs is not None else 0,
            "backoffs": self.backoffs,
        }
