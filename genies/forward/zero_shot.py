"""Zero-shot reward: the frozen model's own log-probability of each response.

The score of a response is its total log-probability given the prompt (`sum`) or the mean
per response token (`mean`). A pair's probability is the Bradley-Terry probability
sigmoid(s_preferred - s_dispreferred); the pair is correct when s_preferred > s_dispreferred.

`sum` is the default: it ranks pairs exactly like the published code, whose score divided the
total log-prob by a padded length shared by both responses of a pair (docs/fidelity.md), so
it reproduces the published zero-shot accuracies. The probabilities differ from the published
ones, which depended on batch padding. `mean` follows the paper's text.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genies.data.predictions import expand_pairs, pair_rows, prediction_run
from genies.io import write_parquet

FORWARD_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("stimulus", pa.string()),  # plain | lat2 | yesno (genies.data.stimuli)
        ("example_id", pa.string()),
        ("response_index", pa.int8()),
        ("answer", pa.int8()),  # yesno stimulus: 0 = "Yes", 1 = "No"; 0 otherwise
        ("logprob_sum", pa.float64()),  # NaN where the example was skipped
        ("n_tokens", pa.int32()),
        # the context policy (genies.models.context): prompt tokens cut to fit, or not scored at all
        ("prompt_tokens_cut", pa.int32()),
        ("skipped", pa.bool_()),
    ]
)


def zero_shot_predictions(
    examples: pa.Table,
    forward: pa.Table,
    normalisation: str,
    model: str,
    eval_dataset: str,
    intervention: str = "zero_shot",
    train: str = "none",
) -> pa.Table:
    """Per-pair predictions for the examples that the forward pass scored.

    Few-shot uses the same scoring on prompts with demonstrations (`intervention`, `train`).
    """
    values = normalise(
        forward.column("logprob_sum").to_numpy(),
        forward.column("n_tokens").to_numpy(),
        normalisation,
    )
    what = f"forward scores of {eval_dataset}"
    skipped = forward.column("skipped").to_numpy(zero_copy_only=False).astype(float)
    cut = forward.column("prompt_tokens_cut").to_numpy().astype(float)
    examples, scores = response_matrix(examples, forward, values, what)
    skipped = response_matrix(examples, forward, skipped, what)[1][:, 0].astype(bool)
    cut = response_matrix(examples, forward, cut, what)[1][:, 0].astype(np.int32)
    if np.isnan(scores[~skipped]).any():
        raise ValueError(f"{what} miss some responses; rerun it")
    pairs = expand_pairs(examples)
    rows = pairs["example_row"]
    s_pref = scores[rows, pairs["preferred_response"]]
    s_disp = scores[rows, pairs["dispreferred_response"]]
    labels = (model, intervention, train, eval_dataset)
    return pair_rows(*labels, pairs, s_pref, s_disp, cut[rows], skipped[rows])


def response_matrix(examples: pa.Table, scored: pa.Table, values, what: str):
    """(examples, [n_examples, k] values): per-response values of rows (example_id,
    response_index) that cover the first examples of a materialised split, with `examples`
    cut to those. Raises when the rows do not match them (the job that wrote them must rerun).
    """
    scored_ids = scored.column("example_id").to_pylist()
    order = list(dict.fromkeys(scored_ids))
    position = {eid: i for i, eid in enumerate(order)}
    wanted = examples.column("example_id").to_pylist()[: len(order)]
    if wanted != order:
        raise ValueError(
            f"{what} cover {len(order)} examples that do not match the first examples of "
            "the materialised data; rerun the forward job (or the job that wrote them)"
        )
    examples = examples.slice(0, len(order))
    k = examples.column("n_responses")[0].as_py() if len(order) else 0
    matrix = np.full((len(order), k), np.nan)
    filled = np.zeros((len(order), k), dtype=bool)
    rows = [position[e] for e in scored_ids]
    responses = scored.column("response_index").to_numpy()
    matrix[rows, responses] = values
    filled[rows, responses] = True
    if not filled.all():
        raise ValueError(f"{what} miss some responses; rerun it")
    return examples, matrix


def read_scores(path, **equal) -> pa.Table:
    """Rows of a forward (or few-shot) scores file whose columns equal the given values."""
    filters = [(name, "=", value) for name, value in equal.items()]
    return pq.read_table(path, filters=filters or None)


def write_zero_shot_predictions(
    data_file,
    forward_file,
    out_path,
    model: str,
    eval_dataset: str,
    normalisation: str,
    intervention: str = "zero_shot",
    train: str = "none",
) -> None:
    """Predictions from the test split's `plain` scores of the forward job (zero-shot), or
    from the few-shot scores of one source (`intervention="few_shot"`, `train` = the source;
    `data_file` is then the few-shot prompts file, which lists the scored examples)."""
    run = prediction_run(model, intervention, train, eval_dataset, forward_file)
    if intervention == "few_shot":
        scores = read_scores(forward_file, train=train)
    else:
        scores = read_scores(forward_file, split="test", stimulus="plain")
    table = zero_shot_predictions(
        pq.read_table(data_file),
        scores.select(FORWARD_SCHEMA.names),
        normalisation,
        model,
        eval_dataset,
        intervention,
        train,
    )
    write_parquet(table, out_path, run.finish(params={"normalisation": normalisation}))


def normalise(logprob_sum, n_tokens, method: str) -> np.ndarray:
    """Turn summed log-probabilities into scores.

    ``"sum"``: the total log-probability (reproduces the ranking of the published
    numbers). ``"mean"``: per-token mean, ``logprob_sum / n_tokens`` (as the paper text
    says); every ``n_tokens`` must then be positive.
    """
    s = np.asarray(logprob_sum, dtype=np.float64)
    if method == "sum":
        return s.copy()
    if method == "mean":
        n = np.asarray(n_tokens)
        if np.any(n <= 0):
            raise ValueError("normalise(method='mean') needs n_tokens > 0 for every response")
        return s / n
    raise ValueError(f"unknown normalisation method {method!r}; expected 'sum' or 'mean'")
