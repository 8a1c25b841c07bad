"""The tune job: train a reward model, then predict every dataset it is evaluated on.

One model load serves the training and all the predictions of a trained reward model (a shift's
source is evaluated on itself and on each of its targets). When only an evaluated dataset changed,
Snakemake reruns the job; the training's work directory then holds the finished run with the same
fingerprint, so nothing is trained again (`genies.methods.tuned.training`).
"""

from __future__ import annotations

import logging

import pyarrow as pa

from genies.data.materialise import read_examples
from genies.io import write_parquet
from genies.methods.tuned.reward_model import adapter_summary, reward_predictions
from genies.methods.tuned.training import fit_reward_model
from genies.models.loading import model_run
from genies.models.memory import Budget
from genies.pipeline.defaults import JOB_DEFAULTS

log = logging.getLogger(__name__)


def run_tune_job(
    *,
    model_dir,
    train_file,
    eval_files: dict,
    out_dir,
    predictions_path,
    method: str,
    params: dict,
    seed: int,
    dataset: str,
    model_name: str,
    limit: int | None = None,
    job: dict | None = None,
) -> None:
    """Train on `train_file` (adapter -> `out_dir`), then write the predictions of every eval
    dataset (`eval_files`: name -> materialised test split; first `limit` examples) into one
    Parquet file. `job`: threads, GPUs, memory settings, retry attempt and context policy
    (`genies.pipeline.defaults.JOB_DEFAULTS`)."""
    job = {**JOB_DEFAULTS, **(job or {})}
    trained = fit_reward_model(
        model_dir=model_dir,
        train_file=train_file,
        out_dir=out_dir,
        method=method,
        params=params,
        seed=seed,
        dataset=dataset,
        threads=job["threads"],
        model_name=model_name,
        memory=job["memory"],
        attempt=job["attempt"],
        gpus=job["gpus"],
    )
    run = model_run("predict", model_name, model_dir, intervention=method, train=dataset)
    info, loaded = trained.info, trained.loaded
    budget = Budget.resolve(job["memory"], loaded.device, job["attempt"], trained.model)
    tables = []
    for eval_dataset, path in eval_files.items():
        examples = read_examples(path, limit)
        log.info("predict %s/%s/%s on %s: %d examples", model_name, method, dataset,
                 eval_dataset, examples.num_rows)  # fmt: skip
        labels = {"model": model_name, "intervention": method, "train": dataset}
        tables.append(
            reward_predictions(
                trained.model,
                loaded.tokenizer,
                examples,
                labels={**labels, "eval_dataset": eval_dataset},
                batch_size=info["params"]["eval_batch_size"],
                max_length=info["params"]["max_length"],
                device=loaded.device,
                context_policy=job["context_policy"],
                budget=budget,
            )
        )
    provenance = run.finish(
        params={"limit": limit, "adapter": adapter_summary(info)},
        memory=budget.record(),
        evals=list(eval_files),
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
    )
    write_parquet(pa.concat_tables(tables), predictions_path, provenance)
