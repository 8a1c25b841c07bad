"""Reward models of the user's own as interventions (docs/reward_models.md).

A config entry under a name the user chooses, with a `kind`
(`genies.pipeline.interventions.configured`), makes an untrained intervention (train = none, like
zero-shot) whose predictions are per-pair rows like every other's; its cells, DE and calibration
come from `genies.results.cells`, under its `base` run model (whose zero-shot baseline and
target-tuned capability make its DE).

``kind: reward_model``, a sequence classifier (``AutoModelForSequenceClassification`` with one
label, a local Hugging Face directory in the model registry). The reward of a response is the
classifier's output for prompt + response: its score head on the final hidden state at the text's
last token, as transformers reads Llama-style classifiers, but in right-padded batches whose last
real token comes from the attention mask (transformers looks for the pad id, which is often EOS and
then inside the text). The text follows the classifier's own training convention
(`genies.data.chat`): in its chat template when its registry entry asks for it (the template writes
every special token), else prompt + response between the tokenizer's own special tokens
(`chat.own_special_ids`: Llama's BOS and no EOS, none for GPT-NeoX); prompt and response are
tokenised separately like every scorer here. Examples beyond the model's positions get the context
policy (`genies.models.context`). One GPU job per (reward model, dataset) scores every response of
the test split once (`genies.methods.reward_classifier.write_reward_scores`), so an edited dataset
reruns only its own job, and several entries (or bases) share the scores; a CPU job per (base,
intervention, dataset) makes the pairs (`write_reward_model_predictions`).

``kind: dpo``, a DPO policy and the reference it was tuned from (both registry models). The implicit
reward is ``beta * (log pi(y|x) - log pi_ref(y|x))`` with the summed log-probabilities of each
response (its EOS, or chat template end of turn, included) from the test split's `plain` scores of
both models' forward jobs: a CPU job (`write_dpo_predictions`), no GPU job of its own. A policy or
reference that is not a run model gets an ordinary forward job of only that
(`genies.pipeline.plan.Plan.forward_work`). beta only scales the rewards: it changes the
calibration, never which response wins.

Both: ``prob_preferred = sigmoid(r_preferred - r_dispreferred)``, correct when
``r_preferred > r_dispreferred``. A pair whose example was not scored (skipped by the context
policy, or NaN in a forward score) is skipped.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genies.data.materialise import read_examples
from genies.data.predictions import expand_pairs, pair_rows, prediction_run
from genies.forward.zero_shot import FORWARD_SCHEMA, read_scores, response_matrix
from genies.io import write_parquet

#: A sequence classifier's reward of every test response (`genies.methods.reward_classifier`).
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
    """Predictions of a sequence classifier from its scores
    (`genies.methods.reward_classifier.write_reward_scores`)."""
    labels = {"model": model, "intervention": intervention, "train": "none", "eval": eval_dataset}
    run = prediction_run(model, intervention, "none", eval_dataset, scores_file)
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
    run = prediction_run(model, intervention, "none", eval_dataset, policy_file, reference_file)
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
