"""Scoring with a sequence-classification reward model of the user's own (``kind: reward_model``).

One GPU job per (reward model, dataset) scores every response of the test split once
(`write_reward_scores`); the pairs come from those scores in a CPU job
(`genies.methods.own_reward_models`, which describes both kinds of own reward model).

The job runs like the other GPU jobs: the classifier is spread over the job's GPUs (the model's
`gpus`), its batches are planned from the memory budget with the trained reward models' cost of
a no-grad call (`genies.models.memory.RewardModelPlan.for_prediction`: a classifier reads its
score head at the last token as they do), an out-of-memory error halves the batch and goes on,
and each retry of the job (`attempt`) halves the budget and the batch cap.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import torch

from genies.data import chat
from genies.data.materialise import read_examples
from genies.io import write_parquet
from genies.methods.own_reward_models import REWARD_SCORES_SCHEMA
from genies.methods.tuned.reward_model import example_rewards, explain_oom, pad_id_of
from genies.models.context import DEFAULT_POLICY, fit_examples, max_positions
from genies.models.loading import (
    ModelError,
    is_sequence_classifier,
    load_model,
    model_run,
    resolve_device,
    resolve_model_dir,
)
from genies.models.memory import Budget, RewardModelPlan
from genies.models.tokens import tokenize_examples
from genies.pipeline.defaults import JOB_DEFAULTS, SCORING_DEFAULTS
from genies.progress import ProgressLog

log = logging.getLogger(__name__)


class ClassifierReward(torch.nn.Module):
    """A sequence classifier's score head at the last real token of right-padded texts.

    It offers what the memory model reads of a reward model
    (`genies.models.memory.TrainingSetup.of`): the network holding the decoder layers (`lm`),
    its dtype, no quantisation, autocast or virtual tokens.
    """

    quantized = False
    autocast_dtype = None
    num_virtual_tokens = 0

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.decoder = getattr(classifier, classifier.base_model_prefix, None)
        self.head = getattr(classifier, "score", None)
        if self.decoder is None or not isinstance(self.head, torch.nn.Linear):
            raise ModelError(
                f"{type(classifier).__name__} is not a decoder classifier with a `score` head "
                "on its last token (as Llama, Mistral, Qwen, Gemma or GPT-NeoX classifiers "
                "are); other reward-model architectures are not supported"
            )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards (float32, ``[batch]``) of right-padded texts."""
        hidden = self.decoder(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        last = (attention_mask.sum(dim=1) - 1).to(hidden.device)
        h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(h_last.to(self.head.weight.device)).float().squeeze(-1)

    @property
    def lm(self):
        """The classifier: its decoder layers set the memory, as a reward model's LM's do."""
        return self.classifier

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.head.weight.dtype


def load_classifier(model_dir, device="auto", dtype="auto", gpus: int = 1):
    """(ClassifierReward, LoadedModel) of a sequence-classification reward model directory,
    spread over `gpus` GPUs (`genies.models.loading.load_model`) when there are more than one."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model_dir(model_dir), trust_remote_code=False)
    if not is_sequence_classifier(config):
        raise ModelError(
            f"the model in {model_dir} is a {', '.join(config.architectures or ['?'])}, not a "
            "sequence classifier (AutoModelForSequenceClassification); a DPO policy is "
            "`kind: dpo`, see docs/reward_models.md"
        )
    if config.num_labels != 1:
        raise ModelError(
            f"the reward model in {model_dir} has {config.num_labels} labels; a reward model is "
            "a classifier with one label (num_labels: 1), its output the reward"
        )
    loaded = load_model(
        model_dir, device=device, dtype=dtype, gpus=gpus, task="sequence_classification"
    )
    return ClassifierReward(loaded.model).eval(), loaded


def classifier_tokens(tokenizer, prompts, responses):
    """(prompt_ids, response_ids) as a sequence classifier reads them (module docstring)."""
    if chat.requested(tokenizer):
        return tokenize_examples(tokenizer, prompts, responses, chat_template=True)
    start, end = chat.own_special_ids(tokenizer)
    prompt_ids, response_ids = tokenize_examples(
        tokenizer, prompts, responses, add_bos=False, append_eos=False, chat_template=False
    )
    return [start + p for p in prompt_ids], [[r + end for r in rs] for rs in response_ids]


def classifier_rewards(
    model: ClassifierReward,
    tokenizer,
    examples: pa.Table,
    *,
    batch_tokens: int,
    device,
    context_policy: str = DEFAULT_POLICY,
    label: str = "",
    budget: Budget | None = None,
) -> pa.Table:
    """The reward of every response of `examples` (REWARD_SCORES_SCHEMA, example-major).

    Calls take the longest texts first, at most `batch_tokens // longest text` of them (at
    least one); under a limited memory `budget` (`genies.models.memory`) length-bucketed
    groups whose planned bytes fit it. An out-of-memory error halves the call that failed
    and goes on from it (recorded in `budget`); a single text that does not fit raises.
    """
    cols = examples.select(["example_id", "prompt", "responses"]).to_pydict()
    prompt_ids, response_ids = classifier_tokens(tokenizer, cols["prompt"], cols["responses"])
    positions = max_positions(model.classifier, tokenizer)
    fit = fit_examples(prompt_ids, response_ids, positions, context_policy, tokenizer.bos_token_id)
    if fit.n_cut or fit.n_skipped:
        log.warning("%s: examples beyond the context: %s", label, fit.summary())
    kept = fit.kept()
    seqs = [[fit.prompt_ids[i] + r for r in response_ids[i]] for i in kept]
    longest = max((len(s) for row in seqs for s in row), default=1)
    rows = max(1, batch_tokens // longest)
    plan = RewardModelPlan.for_prediction(model, budget or Budget(None), rows)
    if budget is not None:
        lengths = np.sort([len(s) for row in seqs for s in row])[::-1]
        budget.note(
            "reward scoring",
            eval_rows=plan.eval_rows,
            planned_peak_bytes=plan.planned_rows_bytes(lengths),
        )
    with explain_oom(
        f"scoring {label} in calls of at most {plan.eval_rows} texts",
        "Spread the reward model over more GPUs (`gpus:` in its registry entry), use GPUs "
        "with more memory, or cut long prompts (`context_policy`).",
    ):
        scored = example_rewards(
            model,
            seqs,
            pad_id_of(tokenizer),
            plan,
            device,
            ProgressLog(f"reward model {label}", "responses"),
        )
    rewards = [np.full(len(rs), np.nan) for rs in response_ids]
    lengths = [np.zeros(len(rs), np.int64) for rs in response_ids]
    for i, r, row in zip(kept, scored if len(kept) else [], seqs, strict=True):
        rewards[i], lengths[i] = r, np.array([len(s) for s in row])
    counts = [len(rs) for rs in response_ids]
    return pa.table(
        {
            "example_id": np.repeat(np.array(cols["example_id"], dtype=object), counts),
            "response_index": np.concatenate([np.arange(k) for k in counts]).astype(np.int8),
            "reward": np.concatenate(rewards),
            "n_tokens": np.concatenate(lengths).astype(np.int32),
            "prompt_tokens_cut": np.repeat(fit.prompt_tokens_cut, counts).astype(np.int32),
            "skipped": np.repeat(fit.skipped, counts),
        },
        schema=REWARD_SCORES_SCHEMA,
    )


def write_reward_scores(
    *,
    data_file,
    model_dir,
    out_path,
    model_name: str,
    dataset: str,
    limit: int | None = None,
    scoring: dict | None = None,
    job: dict | None = None,
) -> None:
    """Score the first `limit` test examples of `data_file` with the classifier of `model_dir`
    (one model load); `scoring` holds batch_tokens, device and dtype (config `scoring`), `job`
    how the job runs (`genies.pipeline.defaults.JOB_DEFAULTS`: threads, GPUs, memory settings,
    retry attempt, context policy), as for the forward job."""
    scoring = {**SCORING_DEFAULTS, **(scoring or {})}
    job = {**JOB_DEFAULTS, **(job or {})}
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    run = model_run(
        "score_reward_model",
        model_name,
        model_dir,
        dataset=dataset,
        split="test",
        params={"limit": limit, "context_policy": job["context_policy"], **scoring},
    )
    examples = read_examples(data_file, limit)
    # the model's GPUs (a registry entry's `gpus`, or its size); one device elsewhere
    on_gpu = resolve_device(scoring["device"]).type == "cuda"
    model, loaded = load_classifier(
        model_dir, scoring["device"], scoring["dtype"], gpus=job["gpus"] if on_gpu else 1
    )
    budget = Budget.resolve(job["memory"], loaded.device, job["attempt"], loaded.model)
    log.info(
        "%s on %s: %d examples, device %s, dtype %s, %s, chat template %s",
        model_name,
        dataset,
        examples.num_rows,
        loaded.device,
        loaded.dtype,
        budget.describe(),
        chat.requested(loaded.tokenizer),
    )
    table = classifier_rewards(
        model,
        loaded.tokenizer,
        examples,
        batch_tokens=scoring["batch_tokens"],
        device=loaded.device,
        context_policy=job["context_policy"],
        label=f"{model_name}/{dataset}",
        budget=budget,
    )
    dtype = str(loaded.dtype).removeprefix("torch.")
    provenance = run.finish(
        device=str(loaded.device),
        dtype=dtype,
        device_map=loaded.placement(),
        memory=budget.record(),
    )
    write_parquet(table, out_path, provenance)
