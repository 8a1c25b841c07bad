"""The per-pair prediction format shared by every intervention.

One row per evaluated pair: the preferred response against one dispreferred response of an
example (`pair_index` i pairs `preferred` with `dispreferred[i]` of the materialised data).
`prob_preferred` is the probability the method gives the preferred response; `correct` is
True only when the preferred response strictly wins (a tie is not a win).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

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
    ]
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
) -> pa.Table:
    n = len(pairs["example_id"])
    prob_preferred = np.asarray(prob_preferred, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if prob_preferred.shape != (n,) or correct.shape != (n,):
        raise ValueError(f"expected {n} predictions, got {prob_preferred.shape}/{correct.shape}")
    if np.isnan(prob_preferred).any():
        raise ValueError("prediction probabilities contain NaN")
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
        },
        schema=PREDICTION_SCHEMA,
    )


def read_predictions(files) -> pa.Table:
    if not files:
        return PREDICTION_SCHEMA.empty_table()
    dataset = pads.dataset([str(f) for f in files], format="parquet", schema=PREDICTION_SCHEMA)
    # One chunk per file otherwise: DuckDB ingests (and the cells encode) one contiguous chunk
    # about twice as fast as thousands of small ones.
    return dataset.to_table().combine_chunks()
