"""Scoring with a sequence-classification reward model of the user's own (``kind: reward_model``).

One GPU job per (reward model, dataset) scores every response of the test split once
(`write_reward_scores`); the pairs come from those scores in a CPU job
(`genies.methods.own_reward_models`, which describes both kinds of own reward model).
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
    resolve_model_dir,
)
from genies.models.tokens import tokenize_examples
from genies.pipeline.defaults import SCORING_DEFAULTS
from genies.progress import ProgressLog

log = logging.getLogger(__name__)


class ClassifierReward(torch.nn.Module):
    """A sequence classifier's score head at the last real token of right-padded texts."""

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


def load_classifier(model_dir, device="auto", dtype="auto"):
    """(ClassifierReward, LoadedModel) of a sequence-classification reward model directory."""
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
    loaded = load_model(model_dir, device=device, dtype=dtype, task="sequence_classification")
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
) -> pa.Table:
    """The reward of every response of `examples` (REWARD_SCORES_SCHEMA, example-major).

    Batches hold at most `batch_tokens` padded positions: the longest texts first, as many
    of them per call as fit (at least one); smaller after an out-of-memory error.
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
    with explain_oom(
        f"scoring {label} in calls of {rows} texts",
        "Lower scoring.batch_tokens or give the job a larger GPU.",
    ):
        scored = example_rewards(
            model,
            seqs,
            pad_id_of(tokenizer),
            rows,
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
    context_policy: str = DEFAULT_POLICY,
    threads: int | None = None,
) -> None:
    """Score the first `limit` test examples of `data_file` with the classifier of `model_dir`
    (one model load); `scoring` holds batch_tokens, device and dtype (config `scoring`)."""
    if threads:
        torch.set_num_threads(threads)
    scoring = {**SCORING_DEFAULTS, **(scoring or {})}
    run = model_run(
        "score_reward_model",
        model_name,
        model_dir,
        dataset=dataset,
        split="test",
        params={"limit": limit, "context_policy": context_policy, **scoring},
    )
    examples = read_examples(data_file, limit)
    model, loaded = load_classifier(model_dir, scoring["device"], scoring["dtype"])
    log.info(
        "%s on %s: %d examples, device %s, dtype %s, chat template %s",
        model_name,
        dataset,
        examples.num_rows,
        loaded.device,
        loaded.dtype,
        chat.requested(loaded.tokenizer),
    )
    table = classifier_rewards(
        model,
        loaded.tokenizer,
        examples,
        batch_tokens=scoring["batch_tokens"],
        device=loaded.device,
        context_policy=context_policy,
        label=f"{model_name}/{dataset}",
    )
    dtype = str(loaded.dtype).removeprefix("torch.")
    write_parquet(table, out_path, run.finish(device=str(loaded.device), dtype=dtype))
