"""Distributions of the user's own (`distributions:`): local files in every format and layout,
one bad row per check, row locations through slices and several files, sha256 pins."""

import json
import math
import os

import pyarrow.parquet as pq
import pytest

from genies.data.distributions import materialise_distribution, pin_source
from genies.data.layouts import LAYOUTS
from genies.errors import ConfigError, DataError
from genies.io import read_provenance
from genies.pipeline.config import validate_config
from genies.pipeline.plan import Plan

from .fixtures import workflow_config, write_rows

PAIRS = [
    {"prompt": f"Q{i}?", "chosen": f" good {i}", "rejected": f" bad {i}", "src": "x"}
    for i in range(4)
]


def messages(question, answer):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


MESSAGES = [
    {
        "prompt": f"Q{i}?",
        "chosen": messages(f"Q{i}?", f"good {i}"),
        "rejected": messages(f"Q{i}?", f"bad {i}"),
        "score_chosen": 8.0,
    }
    for i in range(3)
]
TRANSCRIPTS = [
    {
        "chosen": f"\n\nHuman: hi {i}\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: sure {i}",
        "rejected": f"\n\nHuman: hi {i}\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: no",
    }
    for i in range(3)
]
RANKED = [
    {"prompt": f"Q{i}", "responses": [f"a{i}", f"b{i}", f"c{i}"], "scores": [7.5, 9, 2]}
    for i in range(3)
]
# openbmb/UltraFeedback: a list of objects, the scores inside them.
COMPLETIONS = [
    {
        "instruction": f"Q{i}",
        "completions": [
            {"response": f"x{i}", "overall_score": 1.0},
            {"response": f"y{i}", "overall_score": 3.0},
        ],
    }
    for i in range(3)
]


def materialised(tmp_path, spec, split="test", name="mine"):
    """Pin `spec`, materialise `split`; return its rows and provenance."""
    pin = tmp_path / "results" / name / "source.json"
    pin_source(name, spec, pin)
    out = tmp_path / "results" / name / f"{split}.parquet"
    materialise_distribution(name, spec, split, pin, out)
    return pq.read_table(out).to_pylist(), read_provenance(out)


def both_splits(tmp_path, rows, suffix=".jsonl", **spec):
    """An entry whose train and test files both hold `rows`."""
    files = {s: str(write_rows(tmp_path / f"{s}{suffix}", rows)) for s in ("train", "test")}
    return {"files": files, **spec}


def triples(rows):
    return [(r["prompt"], r["responses"], r["preferred"]) for r in rows]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet", ".csv"])
def test_pairs_read_the_same_from_every_format(tmp_path, suffix):
    rows, prov = materialised(tmp_path, both_splits(tmp_path, PAIRS, suffix, layout="pairs"))
    assert triples(rows) == [(f"Q{i}?", [f" good {i}", f" bad {i}"], 0) for i in range(4)]
    assert [r["example_id"] for r in rows] == [f"mine/test/{i:05d}" for i in range(4)]
    meta = json.loads(rows[2]["metadata"])
    test_file = str(tmp_path / f"test{suffix}")
    assert meta == {"src": "x", "source_location": test_file, "source_row": 2}
    assert prov["origin"] == "files" and prov["dropped_rows"] == 0
    assert prov["files"][0]["path"] == test_file
    assert len(prov["files"][0]["sha256"]) == 64


def test_messages_share_their_turns_before_the_answer(tmp_path):
    spec = both_splits(tmp_path, MESSAGES, ".parquet", layout="messages")
    rows, _ = materialised(tmp_path, spec)
    assert triples(rows) == [(f"Q{i}?", [f"good {i}", f"bad {i}"], 0) for i in range(3)]
    assert json.loads(rows[0]["metadata"])["score_chosen"] == 8.0


def test_a_multi_turn_prompt_is_an_error_or_a_transcript(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    rows = [
        {"chosen": [system, *r["chosen"]], "rejected": [system, *r["rejected"]]} for r in MESSAGES
    ]
    spec = both_splits(tmp_path, rows, layout="messages")
    with pytest.raises(DataError, match=r"record 0, field 'chosen': the prompt is 2 messages"):
        materialised(tmp_path, spec)
    got, _ = materialised(tmp_path, {**spec, "multi_turn": "transcript"})
    assert got[0]["prompt"] == "\n\nSystem: Be brief.\n\nHuman: Q0?\n\nAssistant: "


def test_transcripts_split_at_the_last_assistant_turn(tmp_path):
    rows, _ = materialised(tmp_path, both_splits(tmp_path, TRANSCRIPTS, layout="transcript"))
    for row, source in zip(rows, TRANSCRIPTS, strict=True):
        assert row["prompt"].endswith("\n\nHuman: help?\n\nAssistant:")
        preferred, other = (
            row["responses"][row["preferred"]],
            row["responses"][1 - row["preferred"]],
        )
        assert row["prompt"] + preferred == source["chosen"]
        assert row["prompt"] + other == source["rejected"]


def test_ranked_keeps_the_best_and_the_worst_or_all(tmp_path):
    spec = both_splits(tmp_path, RANKED, ".json", layout="ranked")
    rows, _ = materialised(tmp_path, spec)
    assert triples(rows) == [(f"Q{i}", [f"b{i}", f"c{i}"], 0) for i in range(3)]
    assert json.loads(rows[0]["metadata"])["scores"] == [9.0, 2.0]
    rows, _ = materialised(tmp_path, {**spec, "keep": "all"})
    assert triples(rows) == [(f"Q{i}", [f"a{i}", f"b{i}", f"c{i}"], 1) for i in range(3)]
    assert [r["dispreferred"] for r in rows] == [[0, 2]] * 3


def test_ranked_response_objects_with_renamed_keys(tmp_path):
    columns = {"prompt": "instruction", "responses": "completions", "text": "response"}
    columns["score"] = "overall_score"
    spec = both_splits(tmp_path, COMPLETIONS, ".parquet", layout="ranked", columns=columns)
    rows, _ = materialised(tmp_path, spec)
    assert triples(rows) == [(f"Q{i}", [f"x{i}", f"y{i}"], 1) for i in range(3)]


def test_ties_dropped_are_counted(tmp_path):
    rows = [*RANKED, {"prompt": "Qt", "responses": ["a", "b"], "scores": [2, 2]}, RANKED[0]]
    spec = both_splits(tmp_path, rows, layout="ranked", ties="drop")
    got, prov = materialised(tmp_path, spec)
    assert len(got) == 4 and prov["dropped_rows"] == 1 and prov["rows"] == 5
    assert [json.loads(r["metadata"])["source_row"] for r in got] == [0, 1, 2, 4]
    assert prov["warnings"][0] == "1 of 5 rows dropped as ties (`ties: drop`)"


def test_a_prompt_template_wraps_the_prompt(tmp_path):
    template = "### Instruction:\n{prompt}\n\n### Response:\n"
    spec = both_splits(tmp_path, PAIRS, layout="pairs", prompt_template=template)
    rows, _ = materialised(tmp_path, spec)
    assert rows[1]["prompt"] == "### Instruction:\nQ1?\n\n### Response:\n"


# One bad row per check: (layout, the bad row, its column, the message). The bad row is row 1
# of the test file, after one good row, so the error must name the user's row, not a count.
GOOD = {"pairs": PAIRS[0], "messages": MESSAGES[0], "transcript": TRANSCRIPTS[0]}
GOOD["ranked"] = RANKED[0]
BAD_ROWS = {
    "missing value": ("pairs", {"prompt": "Q", "chosen": "a"}, "rejected", "is missing"),
    "non-string prompt": (
        "pairs",
        {**PAIRS[1], "prompt": 7},
        "prompt",
        "must be a string, found int",
    ),
    "equal responses": (
        "pairs",
        {**PAIRS[1], "rejected": PAIRS[1]["chosen"]},
        "rejected",
        "chosen and rejected are the same text: no preferred response; set `ties: drop`",
    ),
    "messages not a list": (
        "messages",
        {**MESSAGES[1], "chosen": "hi"},
        "chosen",
        "non-empty list",
    ),
    "message without content": (
        "messages",
        {**MESSAGES[1], "chosen": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
        "chosen",
        "every chat message must have a string 'role' and 'content'",
    ),
    "conversation ends with the user": (
        "messages",
        {**MESSAGES[1], "rejected": MESSAGES[1]["rejected"][:1]},
        "rejected",
        "the last message must be the assistant's, not 'user'",
    ),
    "conversations differ": (
        "messages",
        {**MESSAGES[1], "rejected": messages("Other?", "bad")},
        "rejected",
        "the messages before the last assistant message differ",
    ),
    "only the answer": (
        "messages",
        {"chosen": messages("q", "a")[1:], "rejected": messages("q", "b")[1:]},
        "chosen",
        "no prompt",
    ),
    "no assistant turn": (
        "transcript",
        {**TRANSCRIPTS[1], "chosen": "\n\nHuman: hi"},
        "chosen",
        "no 'Assistant:' turn",
    ),
    "transcripts differ": (
        "transcript",
        {**TRANSCRIPTS[1], "rejected": "\n\nHuman: other\n\nAssistant: no"},
        "rejected",
        "the transcript before the last 'Assistant:' differs",
    ),
    "tie at the top": (
        "ranked",
        {**RANKED[1], "scores": [9, 9, 2]},
        "scores",
        "2 responses share the highest score 9.0; set `ties: drop`",
    ),
    "NaN score": (
        "ranked",
        {**RANKED[1], "scores": [1, math.nan, 2]},
        "scores",
        "score nan is not",
    ),
    "scores of another length": (
        "ranked",
        {**RANKED[1], "scores": [1, 2]},
        "scores",
        "list of 3 scores",
    ),
    "no responses": (
        "ranked",
        {**RANKED[1], "responses": [], "scores": []},
        "responses",
        "has 0 response(s); a pair needs at least 2",
    ),
    "two equal responses": (
        "ranked",
        {**RANKED[1], "responses": ["a", "a", "c"]},
        "responses",
        "two responses are the same text",
    ),
    "non-string response": (
        "ranked",
        {**RANKED[1], "responses": ["a", 5, "c"]},
        "responses",
        "string",
    ),
}


@pytest.mark.parametrize("check", BAD_ROWS)
def test_one_bad_row_per_check(tmp_path, check):
    layout, bad, column, message = BAD_ROWS[check]
    # JSON Lines keeps each row's own types (Arrow would unify them in a Parquet file).
    test_file = write_rows(tmp_path / "test.jsonl", [GOOD[layout], bad])
    train_file = write_rows(tmp_path / "train.jsonl", [GOOD[layout]])
    spec = {"files": {"train": str(train_file), "test": str(test_file)}, "layout": layout}
    with pytest.raises(DataError) as err:
        materialised(tmp_path, spec)
    assert str(err.value).startswith(f"{test_file}, record 1, field '{column}': "), err.value
    assert message in str(err.value)
    assert not (tmp_path / "results/mine/test.parquet").exists()


def test_the_genies_checks_name_the_users_row_and_column(tmp_path):
    # keep: all and a row with another response count: validate_examples's own check and message
    rows = [RANKED[0], RANKED[1], {**RANKED[2], "responses": ["p", "q"], "scores": [1, 2]}]
    spec = both_splits(tmp_path, rows, layout="ranked", keep="all")
    with pytest.raises(DataError) as err:
        materialised(tmp_path, spec)
    assert str(err.value) == (
        f"{tmp_path / 'test.jsonl'}, record 2, field 'responses': has 2 responses but record 0 "
        "has 3; all examples of a file must have the same number"
    )


def test_a_missing_column_names_the_file_and_its_columns(tmp_path):
    spec = both_splits(tmp_path, PAIRS, layout="pairs", columns={"prompt": "question"})
    with pytest.raises(DataError, match=r"field 'question': has no column 'question' \(its "):
        materialised(tmp_path, spec)


def test_rows_are_located_through_slices_and_several_files(tmp_path):
    first = write_rows(tmp_path / "a.jsonl", PAIRS[:3])
    bad = [PAIRS[3], {**PAIRS[0], "prompt": None}]
    second = write_rows(tmp_path / "b.jsonl", bad)
    spec = {"files": {"all": [str(first), str(second)]}, "layout": "pairs"}
    spec["splits"] = {"train": "all[:2]", "test": "all[2:4]"}
    rows, prov = materialised(tmp_path, spec)
    assert [r["prompt"] for r in rows] == ["Q2?", "Q3?"]
    located = [json.loads(r["metadata"]) for r in rows]
    assert [(m["source_location"], m["source_row"]) for m in located] == [
        (str(first), 2),
        (str(second), 0),
    ]
    assert [f["path"] for f in prov["files"]] == [str(first), str(second)]
    spec["splits"]["test"] = "all[3:]"
    with pytest.raises(DataError, match=rf"^{second}, record 1, field 'prompt': is missing"):
        materialised(tmp_path, spec)
    spec["splits"]["test"] = "validation"
    with pytest.raises(DataError, match=r"test split \('validation'\).*splits \['all'\]"):
        materialised(tmp_path, spec)


def test_an_edited_file_is_read_anew_and_must_match_its_pin(tmp_path):
    spec = both_splits(tmp_path, PAIRS, layout="pairs")
    rows, prov = materialised(tmp_path, spec)
    assert len(rows) == 4
    test_file = tmp_path / "test.jsonl"
    stat = test_file.stat()
    write_rows(test_file, PAIRS[:2])
    # as `cp -p` or `rsync -t` leave it: the same modification time, other content
    os.utime(test_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    pin = tmp_path / "results/mine/source.json"
    with pytest.raises(DataError, match="changed since its distribution was pinned"):
        materialise_distribution("mine", spec, "test", pin, tmp_path / "again.parquet")
    rows, again = materialised(tmp_path, spec)
    assert len(rows) == 2
    assert again["files"][0]["sha256"] != prov["files"][0]["sha256"]


# ------------------------------------------------------------------------------ config, plan


def config_with(data, distributions):
    return workflow_config(data, distributions=distributions)


def test_the_plan_offers_own_distributions_beside_the_genies_datasets(genies_folder):
    spec = {"files": {"train": "a.jsonl", "test": "b.jsonl"}, "layout": "pairs"}
    plan = Plan(validate_config(config_with(genies_folder, {"mine": spec})))
    assert plan.available_datasets == ["mine", "ref_d", "src_a", "tgt_b", "tgt_c"]
    assert plan.distribution_files("mine") == ["a.jsonl", "b.jsonl"]
    assert plan.distributions["mine"]["splits"] == {"train": "train", "test": "test"}
    clash = Plan(validate_config(config_with(genies_folder, {"tgt_b": spec})))
    with pytest.raises(ConfigError, match="tgt_b is the name of a GENIES dataset"):
        _ = clash.available_datasets


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"layout": "pairs"}, "exactly one of `files`"),
        ({"hub": "o/d", "files": {"train": "a.csv"}, "layout": "pairs"}, "exactly one of `files`"),
        ({"files": {"train": "a.csv"}, "revision": "v1", "layout": "pairs"}, "`revision` is for"),
        ({"files": {"t": "a.csv"}, "layout": "pairs", "columns": {"scores": "s"}}, "['scores']"),
        ({"files": {"t": "a.csv"}, "layout": "pairs", "keep": "all"}, "option of layout ranked"),
        ({"files": {"t": "a.txt"}, "layout": "pairs"}, "a.txt is not one of"),
        ({"files": {"t": "a.csv"}, "layout": "pairs", "prompt_template": "Q: "}, "prompt_template"),
        ({"files": {"t": "a.csv"}, "layout": "dpo"}, "layout"),
    ],
)
def test_a_wrong_entry_is_refused_before_any_job(genies_folder, entry, message):
    with pytest.raises(ConfigError) as err:
        validate_config(config_with(genies_folder, {"mine": entry}))
    assert message in str(err.value)


def test_every_layout_role_is_documented_in_the_schema():
    from genies.pipeline.config import load_schema

    text = load_schema()["$defs"]["distribution"]["properties"]["columns"]["description"]
    assert all(role in text for roles in LAYOUTS.values() for role in roles)
