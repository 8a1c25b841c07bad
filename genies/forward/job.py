"""The forward job: one model load runs every split and stimulus a dataset needs.

`work` (from `genies.pipeline.plan.Plan.forward_work`) says what to compute: split -> stimulus ->
{activation kind: layers}. For every (split, stimulus) the job records, per scored text, the
summed log-probability of its continuation tokens and their count (one Parquet file with
`split` and `stimulus` columns), and the last-token activations that a configured probe reads
(one safetensors file, tensors named "<split>/<stimulus>/<kind>"; see `genies.forward.activations`).
Nothing a configured method does not read is stored: e.g. the yes/no stimulus keeps only the
residual layer CCS reads. Rows are example-major: (example, response) for `plain` and `lat2`,
(example, response, answer) for `yesno`. Examples are the first `limits[split]` of the
materialised split (the config's caps).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from genies.data.materialise import read_examples
from genies.data.stimuli import stimulus_turns
from genies.forward.activations import ActivationCapture, ActivationWriter
from genies.forward.baselines import fit_few_shot
from genies.forward.scoring import score_tokenized
from genies.forward.zero_shot import FORWARD_SCHEMA
from genies.io import write_parquet
from genies.models.context import fit_examples, max_positions, prompt_token_counter
from genies.models.layout import activation_shapes, resolve_layers
from genies.models.loading import load_model, model_run, resolve_device
from genies.models.memory import Budget
from genies.models.tokens import appended_tokens, tokenize_examples
from genies.pipeline.cluster import activation_file_bytes
from genies.pipeline.defaults import JOB_DEFAULTS, SCORING_DEFAULTS
from genies.progress import ProgressLog
from genies.scratch import choose_scratch

log = logging.getLogger(__name__)

#: The `stimulus` of few-shot scores (their rows also carry the source in `train`).
FEW_SHOT = "few_shot"


def tensor_name(split: str, stimulus: str, kind: str) -> str:
    return f"{split}/{stimulus}/{kind}"


def layers_key(split: str, stimulus: str, kind: str) -> str:
    """Metadata key of the layers a tensor holds (absent: all layers, in order)."""
    return f"{tensor_name(split, stimulus, kind)}.layers"


class _Pass:
    """One (split, stimulus): its tokenised texts, how they fit the model's context, and the
    activations it stores."""

    def __init__(
        self, split, stimulus, examples, kinds, loaded, context_policy, train=None,
        activation_token="last_token",
    ):  # fmt: skip
        self.split, self.stimulus, self.examples, self.train = split, stimulus, examples, train
        tokenizer, layout = loaded.tokenizer, loaded.layout
        limit = max_positions(loaded.model, tokenizer)
        cols = examples.select(["example_id", "prompt", "responses"]).to_pydict()
        self.example_ids, self.responses = cols["example_id"], cols["responses"]
        # few-shot prompts are scored like the plain stimulus
        unit = "plain" if stimulus == FEW_SHOT else stimulus
        prompts, starts, continuations, append_eos = stimulus_turns(
            unit, cols["prompt"], cols["responses"]
        )

        def tokenize(prompts):  # with the model's chat template when it asks for one
            return tokenize_examples(
                tokenizer, prompts, continuations, append_eos=append_eos, assistant_starts=starts
            )

        prompt_ids, self.response_ids = tokenize(prompts)
        self.shots_kept = None
        if stimulus == FEW_SHOT:  # as many demonstrations as fit, the last dropped first
            demos = [[(d["prompt"], d["response"]) for d in ds] for ds in
                     examples.column("demonstrations").to_pylist()]  # fmt: skip
            longest = [max(map(len, rs)) for rs in self.response_ids]
            texts, self.shots_kept = fit_few_shot(
                prompts, demos, prompt_token_counter(tokenizer), longest, limit
            )
            prompt_ids, _ = tokenize(texts)
        # what still does not fit: the prompt's start is cut, or it is skipped
        # (genies.models.context)
        self.fit = fit_examples(
            prompt_ids, self.response_ids, limit, context_policy, tokenizer.bos_token_id
        )
        self.prompt_ids = self.fit.prompt_ids
        self.n_rows = sum(map(len, continuations))
        self.resid_layers = (
            resolve_layers(kinds["resid"], layout["num_layers"]) if "resid" in kinds else None
        )
        shapes = activation_shapes(self.n_rows, layout, "heads" in kinds, self.resid_layers)
        self.tensors = {tensor_name(split, stimulus, k): v for k, v in shapes.items()}
        # Activations are read at the response's last token, before what the scoring appends
        # to it (EOS, or a chat template's end of turn), as the published probes read them;
        # `eos` reads the appended token instead.
        self.read_offset = 0
        if self.tensors and activation_token == "last_token":
            self.read_offset = appended_tokens(tokenizer, prompts, append_eos)

    @property
    def label(self) -> str:
        return f"{self.split}/{self.stimulus}" + (f"/{self.train}" if self.train else "")

    def metadata(self) -> dict:
        if self.resid_layers in (None, "all"):
            return {}
        return {layers_key(self.split, self.stimulus, "resid"): json.dumps(self.resid_layers)}

    def table(self, result) -> pa.Table:
        """Label the scorer's example-major rows with split, stimulus, example, response, answer."""
        n_answers = 2 if self.stimulus == "yesno" else 1
        ids, resp, answer, unit = [], [], [], []
        for e, (eid, rs) in enumerate(zip(self.example_ids, self.responses, strict=True)):
            for j in range(len(rs)):
                ids += [eid] * n_answers
                resp += [j] * n_answers
                answer += list(range(n_answers))
                # the context fit is per scored unit: an example, or (yes/no) a response of it
                unit += [len(resp) // n_answers - 1 if n_answers == 2 else e] * n_answers
        n = len(ids)
        unit = np.asarray(unit, dtype=np.int64)
        table = pa.table(
            {
                "split": pa.array([self.split] * n, pa.string()),
                "stimulus": pa.array([self.stimulus] * n, pa.string()),
                "example_id": pa.array(ids, pa.string()),
                "response_index": pa.array(resp, pa.int8()),
                "answer": pa.array(answer, pa.int8()),
                "logprob_sum": pa.array(result.logprob_sum, pa.float64()),
                "n_tokens": pa.array(result.n_tokens, pa.int32()),
                "prompt_tokens_cut": pa.array(self.fit.prompt_tokens_cut[unit], pa.int32()),
                "skipped": pa.array(self.fit.skipped[unit], pa.bool_()),
            },
            schema=FORWARD_SCHEMA,
        )
        if self.shots_kept is not None:
            kept = pa.array(self.shots_kept[unit], pa.int8())
            table = table.append_column("shots_kept", kept)
        if self.train is not None:
            table = table.append_column("train", pa.array([self.train] * n, pa.string()))
        return table


def run_forward(
    *,
    data_files: dict,
    model_dir,
    scores_path,
    activations_path,
    model_name: str,
    dataset: str,
    work: dict,
    limits: dict | None = None,
    scoring: dict | None = None,
    job: dict | None = None,
) -> None:
    """Run `work` on `dataset` (data_files: split -> materialised Parquet) with one model load.

    `scoring` holds batch_tokens, device and dtype (config `scoring`); `job` how the job runs
    (`JOB_DEFAULTS`: threads, GPUs, memory settings, retry attempt, context policy, scratch
    folder). Where the activation file is written is settled, and its room checked, before the
    model loads (`genies.scratch.choose_scratch`).
    """
    limits = limits or {}
    params = {"work": work, "limits": limits}
    planned = activation_file_bytes(work, data_files, limits, model_dir)
    scratch = None
    if planned:
        setting = {**JOB_DEFAULTS, **(job or {})}["scratch_dir"]
        Path(activations_path).parent.mkdir(parents=True, exist_ok=True)
        scratch = choose_scratch(planned, setting, Path(activations_path).parent)
    with _ModelJob(
        "forward", model_dir, model_name, scoring, job, params, scratch, dataset=dataset
    ) as mj:
        passes = []
        for split, stimuli in work.items():
            examples = read_examples(data_files[split], limits.get(split))
            for stimulus, kinds in stimuli.items():
                passes.append(mj.new_pass(split, stimulus, examples, kinds))
        mj.score(passes, scores_path, activations_path, dataset)


def run_few_shot_scores(
    *,
    prompt_files: dict,
    model_dir,
    scores_path,
    model_name: str,
    eval_dataset: str,
    scoring: dict | None = None,
    job: dict | None = None,
) -> None:
    """Score the few-shot prompts of every source (prompt_files: source -> prompts Parquet,
    written by the few_shot_prompts job) with one model load, like zero-shot: each prompt
    keeps as many of its demonstrations as fit the model's context."""
    params = {"sources": sorted(prompt_files)}
    with _ModelJob(
        "score_few_shot", model_dir, model_name, scoring, job, params, eval=eval_dataset
    ) as mj:
        passes = [
            mj.new_pass("test", FEW_SHOT, read_examples(path), {}, train=source)
            for source, path in prompt_files.items()
        ]
        mj.score(passes, scores_path, None, eval_dataset)


class _ModelJob:
    """One model load, its memory budget and provenance, serving several scoring passes."""

    def __init__(self, name, model_dir, model_name, scoring, job, params, scratch=None, **fields):
        self.scoring = {**SCORING_DEFAULTS, **(scoring or {})}
        self.job = {**JOB_DEFAULTS, **(job or {})}
        self.model_name = model_name
        self.run = model_run(
            name, model_name, model_dir, params={**params, **self.scoring}, **fields
        )
        self.model_dir = model_dir
        self.scratch = scratch  # where the activation file is written first (None: beside it)

    def __enter__(self):
        if self.job["threads"]:
            torch.set_num_threads(self.job["threads"])
        # the model's GPUs (a registry entry's `gpus`, or its size); one device elsewhere
        on_gpu = resolve_device(self.scoring["device"]).type == "cuda"
        self.loaded = load_model(
            self.model_dir,
            device=self.scoring["device"],
            dtype=self.scoring["dtype"],
            gpus=self.job["gpus"] if on_gpu else 1,
        )
        self.budget = Budget.resolve(
            self.job["memory"], self.loaded.device, self.job["attempt"], self.loaded.model
        )
        return self

    def __exit__(self, *exc):
        return False

    def new_pass(self, split, stimulus, examples, kinds, train=None) -> _Pass:
        return _Pass(
            split, stimulus, examples, kinds, self.loaded, self.job["context_policy"], train,
            self.scoring["activation_token"],
        )  # fmt: skip

    def score(self, passes, scores_path, activations_path, dataset) -> None:
        """Score every pass; write the scores (and activations), with provenance."""
        loaded = self.loaded
        log.info(
            "%s/%s on %s, dtype %s, %s: %s",
            self.model_name,
            dataset,
            loaded.device,
            loaded.dtype,
            self.budget.describe(),
            ", ".join(f"{p.label} ({p.n_rows} texts, stores {sorted(p.tensors) or 'nothing'})"
                      for p in passes),
        )  # fmt: skip
        tensors = {name: shape for p in passes for name, shape in p.tensors.items()}
        writer = capture = None
        if activations_path is not None:
            meta = {"model": self.model_name, "dataset": dataset}
            meta["num_layers"] = loaded.layout["num_layers"]
            for p in passes:
                meta.update(p.metadata())
            writer = ActivationWriter(activations_path, tensors, meta, self.scratch)
        if tensors:
            capture = ActivationCapture(loaded.model, loaded.layout["num_heads"])
        tables, stats = [], {}
        try:
            for p in passes:
                if p.tensors:
                    arrays = {name.rsplit("/", 1)[1]: writer.arrays[name] for name in p.tensors}
                    resid_layers = None if p.resid_layers == "all" else p.resid_layers
                    capture.target(arrays.get("heads"), arrays.get("resid"), resid_layers)
                result = score_tokenized(
                    loaded.model,
                    p.prompt_ids,
                    p.response_ids,
                    batch_tokens=self.scoring["batch_tokens"],
                    budget=self.budget,
                    device=loaded.device,
                    progress=ProgressLog(f"{self.model_name}/{dataset}/{p.label}"),
                    capture=capture if p.tensors else None,
                    skip=p.fit.skipped,
                    read_offset=p.read_offset,
                )
                tables.append(p.table(result))
                stats[p.label] = {
                    "tokens_processed": result.tokens_processed,
                    "tokens_unique": result.tokens_unique,
                    "n_examples": p.examples.num_rows,
                    "context": p.fit.summary(),
                    "memory_plan": result.plan,
                }
                if p.shots_kept is not None:
                    stats[p.label]["shots_kept"] = np.bincount(p.shots_kept).tolist()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            if capture is not None:
                capture.remove()
        if writer is not None:
            writer.close()
        log.info("done: %s", stats)
        provenance = self.run.finish(
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
            device_map=loaded.placement(),
            memory=self.budget.record(),
            passes=stats,
        )
        write_parquet(pa.concat_tables(tables, promote_options="default"), scores_path, provenance)
