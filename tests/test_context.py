"""Context policy (issue 10): texts beyond the model's positions are cut or skipped, recorded."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genies.data.materialise import defect_warnings, examples_table, materialise
from genies.data.predictions import (
    PREDICTION_SCHEMA,
    expand_pairs,
    predictions_table,
    read_predictions,
)
from genies.forward.baselines import few_shot_prompt, fit_few_shot
from genies.forward.scoring import score_tokenized
from genies.methods.tuned.reward_model import (
    build_reward_model,
    encode_examples,
    reward_predictions,
)
from genies.methods.tuned.training import resolve_params
from genies.models.context import (
    cut_to_length,
    fit_examples,
    max_positions,
    prompt_token_counter,
)
from genies.models.loading import load_model
from genies.models.prepare import prepare_model
from genies.models.tokens import tokenize_examples
from tests.fixtures import make_examples

BOS = 1
LIMIT = 128  # positions of the tiny model used here


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny128"
    prepare_model({"source": "tiny", "max_position_embeddings": LIMIT}, path)
    return path


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return load_model(tiny_dir, device="cpu", dtype="float32")


# ------------------------------------------------------------------ limits and the policy


class _Config:
    def __init__(self, n):
        self.max_position_embeddings = n


class _Tokenizer:
    def __init__(self, n):
        self.model_max_length = n


def test_max_positions_takes_the_smaller_known_limit():
    assert max_positions(_Config(4096), _Tokenizer(2048)) == 2048
    assert max_positions(_Config(2048), _Tokenizer(int(1e30))) == 2048  # "unset" sentinel
    assert max_positions(_Config(None), _Tokenizer(1e30)) is None
    assert max_positions(tokenizer=_Tokenizer(512)) == 512
    assert max_positions(None, None) is None


def test_load_model_sets_the_tokenizer_limit(loaded):
    assert loaded.tokenizer.model_max_length == LIMIT == max_positions(loaded.model)


def test_fitting_examples_are_untouched():
    fit = fit_examples([[BOS, 5, 6]], [[[7, 8], [9]]], 5, bos_id=BOS)
    assert fit.prompt_ids == [[BOS, 5, 6]] and fit.n_cut == fit.n_skipped == 0
    unlimited = fit_examples([[BOS] * 100], [[[7] * 100]], None)
    assert unlimited.prompt_ids == [[BOS] * 100] and unlimited.summary()["examples_cut"] == 0


def test_cut_prompt_keeps_bos_and_whole_responses():
    prompts = [[BOS, 10, 11, 12, 13, 14], [20, 21, 22, 23], [BOS, 30, 31], [BOS, 40]]
    responses = [[[1, 2], [3, 4, 5]], [[6, 7, 8]], [[9] * 6], [[2]]]
    fit = fit_examples(prompts, responses, 6, "cut_prompt", bos_id=BOS)
    # longest response 3: the first prompt keeps BOS and its last 2 tokens
    assert fit.prompt_ids[0] == [BOS, 13, 14]
    assert fit.prompt_ids[1] == [21, 22, 23]  # no BOS to keep: cut from the very start
    assert fit.prompt_ids[3] == [BOS, 40]
    np.testing.assert_array_equal(fit.prompt_tokens_cut, [3, 1, 0, 0])
    # the response alone (with BOS) needs 7 of 6 positions: skipped
    np.testing.assert_array_equal(fit.skipped, [False, False, True, False])
    assert fit.prompt_ids[2] == [BOS, 30, 31]  # a skipped example keeps its prompt
    np.testing.assert_array_equal(fit.kept(), [0, 1, 3])
    for i in fit.kept():
        assert len(fit.prompt_ids[i]) + max(map(len, responses[i])) <= 6
    assert fit.summary() == {
        "max_positions": 6,
        "examples_cut": 2,
        "prompt_tokens_cut": 4,
        "examples_skipped": 1,
    }


def test_skip_policy_skips_instead_of_cutting():
    prompts, responses = [[BOS, 10, 11, 12, 13, 14], [BOS, 40]], [[[1, 2, 3]], [[2]]]
    fit = fit_examples(prompts, responses, 6, "skip", bos_id=BOS)
    np.testing.assert_array_equal(fit.skipped, [True, False])
    np.testing.assert_array_equal(fit.prompt_tokens_cut, [0, 0])
    assert fit.prompt_ids == prompts
    with pytest.raises(ValueError, match="unknown context policy 'drop'"):
        fit_examples(prompts, responses, 6, "drop")


def test_cut_to_length_keeps_first_and_last():
    assert cut_to_length([1, 2, 3, 4, 5], 3) == ([1, 4, 5], 2)
    assert cut_to_length([1, 2, 3], 3) == ([1, 2, 3], 0)
    assert cut_to_length([1, 2, 3], None) == ([1, 2, 3], 0)


# ------------------------------------------------------------------ few-shot


def test_few_shot_drops_demonstrations_last_first(loaded):
    tok = loaded.tokenizer
    count = prompt_token_counter(tok)
    demos = [("Human: what is the sea?\n\nAssistant:", " The sea is wide."), ("Q: 1+1?", " 2")]
    demos += [("Question: Is the moon cheese?\nAnswer:", " False, it is rock and dust.")]
    prompts = ["Human: hi", "x", "The quick brown fox jumps over the lazy dog. " * 3]
    longest = [3, 2, 4]
    full = [count([few_shot_prompt(demos, p)])[0] for p in prompts]
    limit = full[1] + longest[1]  # the second fits exactly with all demonstrations
    texts, kept = fit_few_shot(prompts, [demos] * 3, count, longest, limit)
    assert kept.dtype == np.int8
    assert kept[1] == 3 and texts[1] == few_shot_prompt(demos, prompts[1])
    assert kept[2] == 0 and texts[2] == few_shot_prompt([], prompts[2])  # fits with none: policy
    for text, p, k, n in zip(texts, prompts, kept, longest, strict=True):
        assert text == few_shot_prompt(demos[:k], p)  # the published layout, a prefix of demos
        fits = count([text])[0] + n <= limit
        one_more = k < 3 and count([few_shot_prompt(demos[: k + 1], p)])[0] + n <= limit
        assert (fits or k == 0) and not one_more  # as many as fit, dropped from the end
    assert 0 < kept[0] < 3
    unlimited, all_kept = fit_few_shot(prompts, [demos] * 3, count, longest, None)
    assert list(all_kept) == [3, 3, 3]
    with pytest.raises(ValueError, match="3 prompts"):
        fit_few_shot(prompts, [demos] * 2, count, longest, limit)


def test_prompt_token_counter_matches_the_scorer(loaded):
    texts = ["", "Human: hello\n\nAssistant:", "a b c"]
    ids, _ = tokenize_examples(loaded.tokenizer, texts, [[] for _ in texts])
    assert prompt_token_counter(loaded.tokenizer)(texts) == [len(p) for p in ids]


# ------------------------------------------------------------------ the scorer


def _long_examples():
    prompts = ["short prompt", "a long prompt " * 30, "tiny", "x"]
    responses = [[" yes", " no"], [" the end", " an end"], [" ok" * 70, " fine"], [" a", " b"]]
    return prompts, responses


def test_scorer_refuses_texts_beyond_the_context(loaded):
    prompts, responses = _long_examples()
    prompt_ids, response_ids = tokenize_examples(loaded.tokenizer, prompts, responses)
    with pytest.raises(ValueError, match=f"2 examples do not fit the model's {LIMIT} positions"):
        score_tokenized(loaded.model, prompt_ids, response_ids)


def test_scorer_with_the_policy_applied(loaded):
    prompts, responses = _long_examples()
    prompt_ids, response_ids = tokenize_examples(loaded.tokenizer, prompts, responses)
    fit = fit_examples(prompt_ids, response_ids, LIMIT, bos_id=loaded.tokenizer.bos_token_id)
    assert fit.n_cut == 1 and list(fit.skipped) == [False, False, True, False]
    assert fit.prompt_ids[1][0] == loaded.tokenizer.bos_token_id
    result = score_tokenized(
        loaded.model, fit.prompt_ids, response_ids, batch_tokens=64, skip=fit.skipped
    )
    scores = result.logprob_sum
    assert np.isnan(scores[4:6]).all() and np.isfinite(np.delete(scores, [4, 5])).all()
    # the others score as they do alone
    alone = score_tokenized(
        loaded.model, [fit.prompt_ids[i] for i in (0, 1, 3)], [response_ids[i] for i in (0, 1, 3)]
    )
    np.testing.assert_allclose(np.delete(scores, [4, 5]), alone.logprob_sum, atol=1e-4)


# ------------------------------------------------------------------ reward models


def test_encode_enforces_the_model_limit(loaded):
    tok = loaded.tokenizer
    long_prompt = ["a long prompt " * 30]
    seqs, cut = encode_examples(tok, long_prompt, [["the end"]], None)
    assert cut == 1 and len(seqs[0][0]) == LIMIT and seqs[0][0][0] == tok.bos_token_id
    seqs, cut = encode_examples(tok, long_prompt, [["the end"]], None, reserved_positions=5)
    assert len(seqs[0][0]) == LIMIT - 5
    seqs, cut = encode_examples(tok, long_prompt, [["the end"]], 8)  # explicit: as before
    full, _ = encode_examples(tok, ["a long prompt " * 2], [["the end"]], None)
    assert len(seqs[0][0]) == 8 and seqs[0][0][-3:] == full[0][0][-3:]


@pytest.mark.parametrize("policy", ["cut_prompt", "skip"])
def test_reward_predictions_record_the_policy(tiny_dir, policy):
    params = resolve_params("lora", {"dtype": "float32", "lora_r": 2, "lora_alpha": 4})
    model, base = build_reward_model(tiny_dir, params, seed=0, device="cpu")
    records = make_examples(4, 3, seed=5)
    records[1]["prompt"] = "a long prompt " * 30  # beyond the context: cut or skipped
    first = next(iter(records[2]["responses"]))
    records[2]["responses"] = {
        (" ok" * 70 if text == first else text): score
        for text, score in records[2]["responses"].items()
    }  # a response that alone does not fit: skipped under both policies
    examples = examples_table("fx", "test", records)
    labels = {"model": "tiny", "intervention": "lora", "train": "fx", "eval_dataset": "fx"}
    table = reward_predictions(
        model,
        base.tokenizer,
        examples,
        labels=labels,
        batch_size=4,
        max_length=None,
        device="cpu",
        context_policy=policy,
    ).to_pydict()
    example = [int(e.split("/")[-1]) for e in table["example_id"]]
    for row, ex in enumerate(example):
        skipped = ex == 2 or (ex == 1 and policy == "skip")
        assert table["skipped"][row] == skipped
        assert math.isnan(table["prob_preferred"][row]) == skipped
        assert not (skipped and table["correct"][row])
        assert (table["prompt_tokens_cut"][row] > 0) == (ex == 1 and policy == "cut_prompt")


# ------------------------------------------------------------------ prediction rows


def test_prediction_rows_default_and_skipped():
    examples = examples_table("fx", "test", make_examples(3, 2, seed=1))
    pairs = expand_pairs(examples)
    table = predictions_table("m", "zero_shot", "none", "fx", pairs, [0.7, 0.2, 0.9], [1, 0, 1])
    assert table.column("prompt_tokens_cut").to_pylist() == [0, 0, 0]
    assert table.column("skipped").to_pylist() == [False] * 3
    skipped = np.array([False, True, False])
    table = predictions_table(
        "m", "zero_shot", "none", "fx", pairs, [0.7, np.nan, 0.9], [1, 1, 0], [0, 0, 12], skipped
    )
    assert table.column("correct").to_pylist() == [True, False, False]
    assert table.column("prompt_tokens_cut").to_pylist() == [0, 0, 12]
    with pytest.raises(ValueError, match="NaN"):
        predictions_table("m", "zero_shot", "none", "fx", pairs, [0.7, np.nan, 0.9], [1, 0, 1])


def test_old_prediction_files_read_with_defaults(tmp_path):
    examples = examples_table("fx", "test", make_examples(2, 2, seed=1))
    new = predictions_table(
        "m", "zero_shot", "none", "fx", expand_pairs(examples), [0.6, 0.3], [1, 0]
    )
    old = new.drop(["prompt_tokens_cut", "skipped"])
    pq.write_table(old, tmp_path / "old.parquet")
    pq.write_table(new, tmp_path / "new.parquet")
    table = read_predictions([tmp_path / "old.parquet", tmp_path / "new.parquet"])
    assert table.schema == PREDICTION_SCHEMA
    assert table.column("prompt_tokens_cut").null_count == 0
    assert table.column("skipped").to_pylist() == [False] * 4


# ------------------------------------------------------------------ materialisation


def test_long_examples_are_warned_about(tmp_path):
    records = [{"prompt": f"q{i}?", "responses": {" yes": 1.0, " no": 0.0}} for i in range(4)]
    records[1]["prompt"] = "p" * 43  # 43 + len(" yes") = 47 characters
    records[3]["responses"] = {"r" * 50: 1.0, " no": 0.0}
    table = examples_table("fx", "test", records)
    warnings = defect_warnings(table, long_example_chars=45)
    long = [w for w in warnings if "longer than 45 characters" in w]
    assert len(long) == 1 and long[0].startswith("2 examples") and "fx/test/00003" in long[0]
    assert not [w for w in defect_warnings(table) if "characters" in w]  # default: generous
    assert not [w for w in defect_warnings(table, long_example_chars=None) if "characters" in w]

    d = tmp_path / "distributions" / "fx"
    d.mkdir(parents=True)
    (d / "train.json").write_text(json.dumps(records))
    got = materialise(tmp_path, "fx", "train", tmp_path / "fx.parquet", long_example_chars=45)
    assert long[0].replace("test", "train") in got
    assert pa.types.is_string(pq.read_table(tmp_path / "fx.parquet").schema.field("prompt").type)
