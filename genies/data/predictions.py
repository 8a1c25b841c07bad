"""The per-pair prediction format shared by every intervention.

One row per evaluated pair: the preferred response against one dispreferred response of an
example (`pair_index` i pairs `preferred` with `dispreferred[i]` of the materialised data).
`prob_preferred` is the probability the method gives the preferred response; `correct` is
True only when the preferred response strictly wins (a tie is not a win).

Context policy (`genies.models.context`): `prompt_tokens_cut` is how many prompt tokens were cut
from the left so the pair's texts fit the model (0: none); `skipped` marks a pair whose example was
not scored because it did not fit: its `prob_preferred` is NaN and `correct` False, and it must be
counted, not averaged. Files written before these columns existed read as 0 / False.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from genies.io import RunRecord, models_of

PREDICTION_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("intervention", pa.string()),
        ("train", pa.string()),
        ("eval", pa.string()),
        ("example_id", pa.string()),
        ("pair_index", pa.int16()),
        ("preferred_response", pa.int8()),
        ("dispreferred_response", pa.int8()),
        ("prob_preferred", pa.float64()),
        ("correct", pa.bool_()),
        ("prompt_tokens_cut", pa.int32()),
        ("skipped", pa.bool_()),
    ]
)
# What the context columns hold when a writer (or an older file) does not say.
CONTEXT_DEFAULTS = {"prompt_tokens_cut": 0, "skipped": False}


def prediction_run(model, intervention, train, eval_dataset, *inputs) -> RunRecord:
    """The provenance record of a predict job that reads the model outputs `inputs` (Parquet
    files of jobs that ran the model): it names the prepared models they came from."""
    return RunRecord(
        "predict",
        model=model,
        intervention=intervention,
        train=train,
        eval=eval_dataset,
        models=models_of(*inputs),
    )


def expand_pairs(examples: pa.Table) -> dict[str, np.ndarray]:
    """The evaluation pairs of a materialised split, in example order then pair order."""
    ids, pair_index, preferred, dispreferred, example_row = [], [], [], [], []
    cols = examples.select(["example_id", "preferred", "dispreferred"]).to_pydict()
    for row, (eid, best, others) in enumerate(
        zip(cols["example_id"], cols["preferred"], cols["dispreferred"], strict=True)
    ):
        for i, other in enumerate(others):
            ids.append(eid)
            pair_index.append(i)
            preferred.append(best)
            dispreferred.append(other)
            example_row.append(row)
    return {
        "example_id": np.array(ids, dtype=object),
        "pair_index": np.array(pair_index, dtype=np.int16),
        "preferred_response": np.array(preferred, dtype=np.int8),
        "dispreferred_response": np.array(dispreferred, dtype=np.int8),
        "example_row": np.array(example_row, dtype=np.int64),
    }


def predictions_table(
    model: str,
    intervention: str,
    train: str,
    eval_dataset: str,
    pairs: dict[str, np.ndarray],
    prob_preferred: np.ndarray,
    correct: np.ndarray,
    prompt_tokens_cut: np.ndarray | None = None,
    skipped: np.ndarray | None = None,
) -> pa.Table:
    """Prediction rows of one (model, intervention, train, eval); context columns per pair
    (`pairs["example_row"]` maps an example's values to its pairs), default 0 / False."""
    n = len(pairs["example_id"])
    prob_preferred = np.asarray(prob_preferred, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if prob_preferred.shape != (n,) or correct.shape != (n,):
        raise ValueError(f"expected {n} predictions, got {prob_preferred.shape}/{correct.shape}")
    cut = np.zeros(n, np.int32) if prompt_tokens_cut is None else np.asarray(prompt_tokens_cut)
    skipped = np.zeros(n, bool) if skipped is None else np.asarray(skipped, dtype=bool)
    if cut.shape != (n,) or skipped.shape != (n,):
        raise ValueError(f"expected {n} context values, got {cut.shape}/{skipped.shape}")
    if np.isnan(prob_preferred[~skipped]).any():
        raise ValueError("prediction probabilities contain NaN")
    prob_preferred = np.where(skipped, np.nan, prob_preferred)
    correct = correct & ~skipped
    return pa.table(
        {
            "model": pa.array([model] * n, pa.string()),
            "intervention": pa.array([intervention] * n, pa.string()),
            "train": pa.array([train] * n, pa.string()),
            "eval": pa.array([eval_dataset] * n, pa.string()),
            "example_id": pa.array(pairs["example_id"], pa.string()),
            "pair_index": pairs["pair_index"],
            "preferred_response": pairs["preferred_response"],
            "dispreferred_response": pairs["dispreferred_response"],
            "prob_preferred": prob_preferred,
            "correct": correct,
            "prompt_tokens_cut": cut.astype(np.int32),
            "skipped": skipped,
        },
        schema=PREDICTION_SCHEMA,
    )


def read_predictions(files) -> pa.Table:
    return read_prediction_files(files)[0]


def read_prediction_files(files) -> tuple[pa.Table, np.ndarray]:
    """The rows of every file, file after file, and how many rows each file holds."""
    if not files:
        return PREDICTION_SCHEMA.empty_table(), np.zeros(0, np.int64)
    dataset = pads.dataset([str(f) for f in files], format="parquet", schema=PREDICTION_SCHEMA)
    tables = [part.to_table(schema=PREDICTION_SCHEMA) for part in dataset.get_fragments()]
    counts = np.array([t.num_rows for t in tables], np.int64)
    # One chunk per file otherwise: DuckDB ingests (and the cells encode) one contiguous chunk
    # about twice as fast as thousands of small ones.
    table = pa.concat_tables(tables).combine_chunks()
    for name, default in CONTEXT_DEFAULTS.items():  # files from before the context columns
        column = table.column(name)
        if column.null_count:
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, pc.fill_null(column, default))
    return table, counts


def pair_probabilities(scores_preferred, scores_dispreferred) -> np.ndarray:
    """Bradley-Terry probability that the preferred response wins: ``sigmoid(s_p - s_d)``.

    Computed as ``exp(-log(1 + exp(-(s_p - s_d))))`` with ``np.logaddexp``, which neither
    overflows nor produces NaN for huge differences (``+-inf`` gives exactly 1 or 0).
    """
    d = np.asarray(scores_preferred, dtype=np.float64) - np.asarray(
        scores_dispreferred, dtype=np.float64
    )
    return np.exp(-np.logaddexp(0.0, -d))


def pair_rows(
    model: str,
    intervention: str,
    train: str,
    eval_dataset: str,
    pairs: dict[str, np.ndarray],
    s_preferred,
    s_dispreferred,
    prompt_tokens_cut=None,
    skipped=None,
) -> pa.Table:
    """Prediction rows from each pair's preferred and dispreferred scores (any reward: higher
    is better; NaN where a skipped example was not scored): the probability
    `pair_probabilities`, correct when the preferred score is strictly higher."""
    with np.errstate(invalid="ignore"):  # NaN scores of skipped examples stay NaN
        probabilities = pair_probabilities(s_preferred, s_dispreferred)
    return predictions_table(
        model,
        intervention,
        train,
        eval_dataset,
        pairs,
        probabilities,
        np.asarray(s_preferred) > np.asarray(s_dispreferred),
        prompt_tokens_cut=prompt_tokens_cut,
        skipped=skipped,
    )
