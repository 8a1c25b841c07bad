"""Reward models of the user's own as interventions (docs/reward_models.md).

A config entry under a name the user chooses, with a `kind` (`genies.interventions.configured`),
makes an untrained intervention (train = none, like zero-shot) whose predictions are per-pair
rows like every other's; its cells, DE and calibration come from `genies.cells`, under its
`base` run model (whose zero-shot baseline and target-tuned capability make its DE).

``kind: reward_model``, a sequence classifier (``AutoModelForSequenceClassification`` with one
label, a local Hugging Face directory in the model registry). The reward of a response is the
classifier's output for prompt + response: its score head on the final hidden state at the
text's last token, as transformers reads Llama-style classifiers, but in right-padded batches
whose last real token comes from the attention mask (transformers looks for the pad id, which
is often EOS and then inside the text). The text follows the classifier's own training
convention (`genies.chat`): in its chat template when its registry entry asks for it (the
template writes every special token), else prompt + response between the tokenizer's own
special tokens (`chat.own_special_ids`: Llama's BOS and no EOS, none for GPT-NeoX); prompt and
response are tokenised separately like every scorer here. Examples beyond the model's positions
get the context policy (`genies.context`). One GPU job per (reward model, dataset) scores every
response of the test split once (`write_reward_scores`), so an edited dataset reruns only its
own job, and several entries (or bases) share the scores; a CPU job per (base, intervention,
dataset) makes the pairs (`write_reward_model_predictions`).

``kind: dpo``, a DPO policy and the reference it was tuned from (both registry models). The
implicit reward is ``beta * (log pi(y|x) - log pi_ref(y|x))`` with the summed log-probabilities
of each response (its EOS, or chat template end of turn, included) from the test split's `plain`
scores of both models' forward jobs: a CPU job (`write_dpo_predictions`), no GPU job of its own.
A policy or reference that is not a run model gets an ordinary forward job of only that
(`genies.plan.Plan.forward_work`). beta only scales the rewards: it changes the calibration,
never which response wins.

Both: ``prob_preferred = sigmoid(r_preferred - r_dispreferred)``, correct when
``r_preferred > r_dispreferred``. A pair whose example was not scored (skipped by the context
policy, or NaN in a forward score) is skipped.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import chat
from .context import DEFAULT_POLICY, fit_examples, max_positions
from .data import read_examples
from .forward import SCORING_DEFAULTS
from .io import RunRecord, write_parquet
from .models import ModelError, is_sequence_classifier, load_model, resolve_model_dir
from .predictions import expand_pairs, pair_rows
from .progress import ProgressLog
from .reward_model import example_rewards, explain_oom, pad_id_of
from .scoring import tokenize_examples
from .zero_shot import FORWARD_SCHEMA, read_scores, response_matrix

log = logging.getLogger(__name__)

REWARD_SCORES_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("response_index", pa.int8()),
        ("reward", pa.float64()),  # NaN: the example was skipped (context policy)
        ("n_tokens", pa.int32()),  # of the scored text, prompt included
        ("prompt_tokens_cut", pa.int32()),
        ("skipped", pa.bool_()),
    ]
)


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
    run = RunRecord(
        "score_reward_model",
        model=model_name,
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


# --------------------------------------------------------------------------- predictions


def pair_predictions(examples, rewards, labels: dict, cut=None, skipped=None) -> pa.Table:
    """Per-pair rows from per-response rewards (`[n_examples, k]`, NaN where not scored).

    `cut` / `skipped`: per example, prompt tokens cut and whether it was skipped (default: 0,
    and skipped where a reward is NaN). `labels`: model, intervention, train, eval.
    """
    pairs = expand_pairs(examples)
    rows = pairs["example_row"]
    if skipped is None:
        skipped = np.isnan(rewards).any(axis=1)
    r_pref = rewards[rows, pairs["preferred_response"]]
    r_disp = rewards[rows, pairs["dispreferred_response"]]
    names = (labels["model"], labels["intervention"], labels["train"], labels["eval"])
    cut = None if cut is None else np.asarray(cut)[rows]
    return pair_rows(*names, pairs, r_pref, r_disp, cut, np.asarray(skipped)[rows])


def write_reward_model_predictions(
    *, data_file, scores_file, out_path, model: str, intervention: str, eval_dataset: str
) -> None:
    """Predictions of a sequence classifier from its scores (`write_reward_scores`)."""
    labels = {"model": model, "intervention": intervention, "train": "none", "eval": eval_dataset}
    run = RunRecord("predict", model=model, intervention=intervention, train="none",
                    eval=eval_dataset)  # fmt: skip
    scores = pq.read_table(scores_file)
    data = read_examples(data_file)
    what = f"reward scores of {eval_dataset} ({scores_file})"

    def matrix(column):
        values = scores.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        return response_matrix(data, scores, values, what)

    examples, rewards = matrix("reward")
    # the same for every response of an example
    cut, skipped = (matrix(c)[1].max(axis=1) for c in ("prompt_tokens_cut", "skipped"))
    table = pair_predictions(examples, rewards, labels, cut.astype(np.int32), skipped > 0)
    write_parquet(table, out_path, run.finish(params={"scores": str(scores_file)}))


def dpo_rewards(policy: pa.Table, reference: pa.Table, beta: float) -> np.ndarray:
    """``beta * (log pi - log pi_ref)`` per forward row; both tables in the same row order."""
    keys = ["example_id", "response_index"]
    if not policy.select(keys).equals(reference.select(keys)):
        raise ValueError(
            "the policy's and the reference's forward scores cover different responses (other "
            "caps or data?); rerun their forward jobs"
        )
    pi = policy.column("logprob_sum").to_numpy()
    pi_ref = reference.column("logprob_sum").to_numpy()
    return beta * (pi - pi_ref)


def write_dpo_predictions(
    *,
    data_file,
    policy_file,
    reference_file,
    out_path,
    model: str,
    intervention: str,
    eval_dataset: str,
    beta: float,
) -> None:
    """Predictions of a DPO policy's implicit reward from the test split's `plain` forward
    scores of the policy and of its reference (module docstring)."""
    labels = {"model": model, "intervention": intervention, "train": "none", "eval": eval_dataset}
    run = RunRecord("predict", model=model, intervention=intervention, train="none",
                    eval=eval_dataset)  # fmt: skip
    policy, reference = (
        read_scores(path, split="test", stimulus="plain").select(FORWARD_SCHEMA.names)
        for path in (policy_file, reference_file)
    )
    values = dpo_rewards(policy, reference, beta)
    what = f"forward scores of {eval_dataset} ({policy_file})"
    examples, rewards = response_matrix(read_examples(data_file), policy, values, what)
    table = pair_predictions(examples, rewards, labels)
    params = {"beta": beta, "policy": str(policy_file), "reference": str(reference_file)}
    write_parquet(table, out_path, run.finish(params=params))
