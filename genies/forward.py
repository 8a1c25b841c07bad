"""The forward job: one batched pass of a model over a (stimulus, dataset, split).

It records, per scored text, the summed log-probability of its continuation tokens and their
count (Parquet), and the last-token activations every probe method needs (safetensors, see
`genies.activations`). Rows are example-major: (example, response) for `plain` and `lat2`,
(example, response, answer) for `yesno`. Examples are the first `limit` of the materialised
split (the config's caps).
"""

from __future__ import annotations

import logging

import pyarrow as pa
import torch

from .activations import ActivationCapture, ActivationWriter, activation_tensors
from .data import read_examples
from .io import RunRecord, write_parquet
from .models import load_model
from .progress import ProgressLog
from .scoring import score_tokenized, tokenize_examples
from .stimuli import stimulus_units
from .zero_shot import FORWARD_SCHEMA

log = logging.getLogger(__name__)


def run_forward(
    *,
    data_file,
    model_dir,
    out_path,
    model_name: str,
    dataset: str,
    split: str,
    stimulus: str = "plain",
    activations_path=None,
    limit: int | None = None,
    batch_tokens: int = 4096,
    device: str = "auto",
    dtype: str = "auto",
    threads: int | None = None,
) -> None:
    if threads:
        torch.set_num_threads(threads)
    params = {"limit": limit, "batch_tokens": batch_tokens, "device": device, "dtype": dtype}
    run = RunRecord(
        "forward", model=model_name, dataset=dataset, split=split, stimulus=stimulus, params=params
    )
    examples = read_examples(data_file, limit)
    cols = examples.select(["example_id", "prompt", "responses"]).to_pydict()
    prefixes, continuations, append_eos = stimulus_units(
        stimulus, cols["prompt"], cols["responses"]
    )
    loaded = load_model(model_dir, device=device, dtype=dtype)
    log.info(
        "forward %s/%s/%s on %s: %d examples, %d texts, device %s, dtype %s",
        model_name,
        dataset,
        split,
        stimulus,
        examples.num_rows,
        sum(map(len, continuations)),
        loaded.device,
        loaded.dtype,
    )
    prompt_ids, response_ids = tokenize_examples(
        loaded.tokenizer, prefixes, continuations, append_eos=append_eos
    )
    n_rows = sum(map(len, continuations))
    writer = capture = None
    if activations_path is not None:
        meta = {"model": model_name, "dataset": dataset, "split": split, "stimulus": stimulus}
        writer = ActivationWriter(activations_path, activation_tensors(n_rows, loaded.layout), meta)
        capture = ActivationCapture(loaded.model, writer, loaded.layout["num_heads"])
    try:
        result = score_tokenized(
            loaded.model,
            prompt_ids,
            response_ids,
            batch_tokens=batch_tokens,
            device=loaded.device,
            progress=ProgressLog(f"{model_name}/{stimulus}/{dataset}/{split}"),
            capture=capture,
        )
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        capture.remove()
        writer.close()
    table = _forward_table(stimulus, cols["example_id"], cols["responses"], result)
    stats = {
        "tokens_processed": result.tokens_processed,
        "tokens_unique": result.tokens_unique,
        "n_examples": examples.num_rows,
    }
    log.info("forward done: %s", stats)
    dtype_name = str(loaded.dtype).removeprefix("torch.")
    write_parquet(table, out_path, run.finish(device=str(loaded.device), dtype=dtype_name, **stats))


def _forward_table(stimulus, example_ids, responses, result) -> pa.Table:
    """Label the scorer's example-major rows with example id, response and answer."""
    ids, resp, answer = [], [], []
    for eid, rs in zip(example_ids, responses, strict=True):
        for j in range(len(rs)):
            n_answers = 2 if stimulus == "yesno" else 1
            ids += [eid] * n_answers
            resp += [j] * n_answers
            answer += list(range(n_answers))
    return pa.table(
        {
            "example_id": pa.array(ids, pa.string()),
            "response_index": pa.array(resp, pa.int8()),
            "answer": pa.array(answer, pa.int8()),
            "logprob_sum": pa.array(result.logprob_sum, pa.float64()),
            "n_tokens": pa.array(result.n_tokens, pa.int32()),
        },
        schema=FORWARD_SCHEMA,
    )
