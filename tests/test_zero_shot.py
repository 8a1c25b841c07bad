"""Zero-shot predictions from forward scores: the pair expansion and the guards against scores
that do not belong to the data (a forward pass made with other caps, or stale data)."""

import numpy as np
import pyarrow as pa
import pytest

from genies.data.materialise import examples_table
from genies.forward.zero_shot import FORWARD_SCHEMA, zero_shot_predictions

from .fixtures import make_examples


def scores(examples: pa.Table, n: int, logprob) -> pa.Table:
    """Forward scores of the first `n` examples (test split, plain stimulus)."""
    cols = examples.slice(0, n).select(["example_id", "n_responses"]).to_pydict()
    rows = [(e, j) for e, k in zip(cols["example_id"], cols["n_responses"], strict=True)
            for j in range(k)]  # fmt: skip
    return pa.table(
        {
            "split": ["test"] * len(rows),
            "stimulus": ["plain"] * len(rows),
            "example_id": [e for e, _ in rows],
            "response_index": pa.array([j for _, j in rows], pa.int8()),
            "answer": pa.array(np.zeros(len(rows)), pa.int8()),
            "logprob_sum": pa.array(logprob(len(rows)), pa.float64()),
            "n_tokens": pa.array(np.full(len(rows), 2), pa.int32()),
            "prompt_tokens_cut": pa.array(np.zeros(len(rows)), pa.int32()),
            "skipped": pa.array(np.zeros(len(rows), bool)),
        },
        schema=FORWARD_SCHEMA,
    )


@pytest.fixture
def examples():
    return examples_table("d", "test", make_examples(5, 3, 0))


def test_capped_scores_give_the_first_examples_pairs(examples):
    table = zero_shot_predictions(examples, scores(examples, 3, np.arange), "sum", "m", "d")
    assert table.num_rows == 3 * 2  # the first 3 examples, k - 1 pairs each
    ids = table.column("example_id").to_pylist()
    assert ids == [e for e in examples.column("example_id").to_pylist()[:3] for _ in range(2)]
    # scores rise with the response index: the preferred wins iff it comes later
    pref = table.column("preferred_response").to_numpy()
    disp = table.column("dispreferred_response").to_numpy()
    assert np.array_equal(table.column("correct").to_numpy(), pref > disp)


def test_scores_of_other_examples_are_refused(examples):
    stale = scores(examples, 3, np.arange)
    renamed = stale.set_column(
        2,
        "example_id",
        pa.array([e.replace("00001", "00004") for e in stale["example_id"].to_pylist()]),
    )
    with pytest.raises(ValueError, match="do not match the first examples .* rerun the forward"):
        zero_shot_predictions(examples, renamed, "sum", "m", "d")
    missing = scores(examples, 3, np.arange).slice(0, 8)  # the last response is not scored
    with pytest.raises(ValueError, match="miss some responses; rerun it"):
        zero_shot_predictions(examples, missing, "sum", "m", "d")


def test_skipped_examples_give_skipped_pairs_without_probability(examples):
    table = scores(examples, 3, np.arange)
    skipped = np.array([r == "d/test/00001" for r in table.column("example_id").to_pylist()])
    logprob = np.where(skipped, np.nan, table.column("logprob_sum").to_numpy())
    cut = np.where(np.array([r == "d/test/00002" for r in table["example_id"].to_pylist()]), 5, 0)
    for name, values in (("logprob_sum", logprob), ("skipped", skipped),
                         ("prompt_tokens_cut", cut.astype(np.int32))):  # fmt: skip
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values))
    out = zero_shot_predictions(examples, table, "sum", "m", "d").to_pydict()
    assert out["skipped"] == [False, False, True, True, False, False]
    assert out["prompt_tokens_cut"] == [0, 0, 0, 0, 5, 5]
    assert np.isnan(out["prob_preferred"][2]) and not any(out["correct"][2:4])
