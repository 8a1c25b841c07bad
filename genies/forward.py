"""The forward job: one batched pass of a model over a (stimulus, dataset, split).

It records, per (example, response), the summed log-probability of the response tokens and
their count. Examples are the first `limit` of the materialised split (the config's caps).
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import torch

from .data import read_examples
from .io import RunRecord, write_parquet
from .models import load_model
from .scoring import score_tokenized, tokenize_examples
from .zero_shot import FORWARD_SCHEMA

log = logging.getLogger(__name__)


class _Progress:
    """Logs done/total, examples per second and ETA at most every `every` seconds."""

    def __init__(self, label: str, every: float = 10.0):
        self.label, self.every = label, every
        self.start = self.last = time.time()

    def __call__(self, done: int, total: int) -> None:
        now = time.time()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("nan")
        log.info("%s: %d/%d examples, %.2f ex/s, ETA %.0f s", self.label, done, total, rate, eta)


def run_forward(
    *,
    data_file,
    model_dir,
    out_path,
    model_name: str,
    dataset: str,
    split: str,
    stimulus: str = "plain",
    limit: int | None = None,
    batch_tokens: int = 4096,
    device: str = "auto",
    dtype: str = "auto",
    threads: int | None = None,
) -> None:
    if stimulus != "plain":
        raise ValueError(f"unknown stimulus {stimulus!r}")
    if threads:
        torch.set_num_threads(threads)
    params = {"limit": limit, "batch_tokens": batch_tokens, "device": device, "dtype": dtype}
    run = RunRecord(
        "forward", model=model_name, dataset=dataset, split=split, stimulus=stimulus, params=params
    )
    examples = read_examples(data_file, limit)
    loaded = load_model(model_dir, device=device, dtype=dtype)
    log.info(
        "forward %s/%s/%s on %s: %d examples, device %s, dtype %s",
        model_name,
        dataset,
        split,
        stimulus,
        examples.num_rows,
        loaded.device,
        loaded.dtype,
    )
    cols = examples.select(["example_id", "prompt", "responses"]).to_pydict()
    prompt_ids, response_ids = tokenize_examples(
        loaded.tokenizer, cols["prompt"], cols["responses"]
    )
    result = score_tokenized(
        loaded.model,
        prompt_ids,
        response_ids,
        batch_tokens=batch_tokens,
        device=loaded.device,
        progress=_Progress(f"{model_name}/{dataset}/{split}"),
    )
    ids = [cols["example_id"][i] for i in result.example_index]
    table = pa.table(
        {
            "example_id": pa.array(ids, pa.string()),
            "response_index": pa.array(result.response_index, pa.int8()),
            "logprob_sum": pa.array(result.logprob_sum, pa.float64()),
            "n_tokens": pa.array(result.n_tokens, pa.int32()),
        },
        schema=FORWARD_SCHEMA,
    )
    stats = {
        "tokens_processed": result.tokens_processed,
        "tokens_unique": result.tokens_unique,
        "n_examples": examples.num_rows,
    }
    log.info("forward done: %s", stats)
    write_parquet(
        table,
        out_path,
        run.finish(
            device=str(loaded.device), dtype=str(loaded.dtype).removeprefix("torch."), **stats
        ),
    )
