"""Zero-shot reward: the frozen model's own log-probability of each response.

The score of a response is its total log-probability given the prompt (`sum`) or the mean
per response token (`mean`). A pair's probability is the Bradley-Terry probability
sigmoid(s_preferred - s_dispreferred); the pair is correct when s_preferred > s_dispreferred.

`sum` is the default: it ranks pairs exactly like the published code, whose score divided the
total log-prob by a padded length shared by both responses of a pair (genies-spec.md 4.1), so
it reproduces the published zero-shot accuracies. The probabilities differ from the published
ones, which depended on batch padding. `mean` follows the paper's text.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .io import RunRecord, write_parquet
from .predictions import expand_pairs, predictions_table
from .scoring import normalise, pair_probabilities

FORWARD_SCHEMA = pa.schema(
    [
        ("example_id", pa.string()),
        ("response_index", pa.int8()),
        ("answer", pa.int8()),  # yesno stimulus: 0 = "Yes", 1 = "No"; 0 otherwise
        ("logprob_sum", pa.float64()),
        ("n_tokens", pa.int32()),
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
    scored_ids = forward.column("example_id").to_pylist()
    order = list(dict.fromkeys(scored_ids))
    position = {eid: i for i, eid in enumerate(order)}
    wanted = examples.column("example_id").to_pylist()[: len(order)]
    if wanted != order:
        raise ValueError(
            f"forward scores of {eval_dataset} cover {len(order)} examples that do not match "
            "the first examples of the materialised data; rerun the forward job"
        )
    examples = examples.slice(0, len(order))
    k = examples.column("n_responses")[0].as_py()
    scores = np.full((len(order), k), np.nan)
    rows = [position[e] for e in scored_ids]
    responses = forward.column("response_index").to_numpy()
    scores[rows, responses] = normalise(
        forward.column("logprob_sum").to_numpy(),
        forward.column("n_tokens").to_numpy(),
        normalisation,
    )
    if np.isnan(scores).any():
        raise ValueError(f"forward scores of {eval_dataset} miss some responses; rerun it")
    pairs = expand_pairs(examples)
    rows = pairs["example_row"]
    s_pref = scores[rows, pairs["preferred_response"]]
    s_disp = scores[rows, pairs["dispreferred_response"]]
    return predictions_table(
        model,
        intervention,
        train,
        eval_dataset,
        pairs,
        pair_probabilities(s_pref, s_disp),
        s_pref > s_disp,
    )


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
    run = RunRecord(
        "predict", model=model, intervention=intervention, train=train, eval=eval_dataset
    )
    table = zero_shot_predictions(
        pq.read_table(data_file),
        pq.read_table(forward_file),
        normalisation,
        model,
        eval_dataset,
        intervention,
        train,
    )
    write_parquet(table, out_path, run.finish(params={"normalisation": normalisation}))
