import json
import logging
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from genies.data.materialise import materialise
from genies.data.raw import RawData
from genies.errors import DataError
from genies.io import read_provenance

from .fixtures import make_examples


def test_materialise_roundtrip(genies_folder, tmp_path):
    out = tmp_path / "out" / "tgt_b" / "test.parquet"
    materialise(genies_folder, "tgt_b", "test", out)
    table = pq.read_table(out)
    raw = json.loads((genies_folder / "distributions/tgt_b/test.json").read_text())
    assert table.num_rows == len(raw)
    row = table.slice(0, 1).to_pylist()[0]
    assert row["example_id"] == "tgt_b/test/00000"
    assert row["prompt"] == raw[0]["prompt"]
    assert row["responses"] == list(raw[0]["responses"])
    best = [t for t, s in raw[0]["responses"].items() if s == 1.0][0]
    assert row["responses"][row["preferred"]] == best
    assert sorted([row["preferred"], *row["dispreferred"]]) == [0, 1, 2]
    assert json.loads(row["metadata"]) == {"instruction": raw[0]["instruction"]}
    assert read_provenance(out)["dataset"] == "tgt_b"


def test_leftovers_are_ignored(genies_folder):
    raw = RawData(genies_folder)
    assert raw.datasets() == ["ref_d", "src_a", "tgt_b", "tgt_c"]


def test_archive_equals_folder(genies_folder, tmp_path):
    tar_path = tmp_path / "genies-datasets.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(genies_folder, arcname="genies-datasets")
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    materialise(genies_folder, "src_a", "train", a)
    materialise(tar_path, "src_a", "train", b)
    assert pq.read_table(a).equals(pq.read_table(b))
    assert RawData(tar_path).datasets() == RawData(genies_folder).datasets()


def _write(root, records, name="bad", split="train"):
    d = root / "distributions" / name
    d.mkdir(parents=True, exist_ok=True)
    payload = records if isinstance(records, str) else json.dumps(records)
    (d / f"{split}.json").write_text(payload)
    (d / ("test.json" if split == "train" else "train.json")).write_text(
        json.dumps(make_examples(2, 2, 0))
    )
    return d / f"{split}.json"


def good(k=2):
    return make_examples(3, k, 7)


def _bad_cases():
    missing_prompt = good()
    del missing_prompt[1]["prompt"]
    missing_responses = good()
    del missing_responses[2]["responses"]
    two_best = good()
    two_best[1]["responses"] = {"a": 1.0, "b": 1.0, "c": 0.0}
    no_best = good()
    no_best[0]["responses"] = {"a": 0.0, "b": 0.0}
    no_worst = good()
    no_worst[2]["responses"] = {"a": 1.0, "b": 0.5}
    text_score = good()
    text_score[1]["responses"] = {"a": 1.0, "b": "zero"}
    bool_score = good()
    bool_score[1]["responses"] = {"a": True, "b": 0.0}
    mixed = good()
    mixed[2]["responses"] = {"a": 1.0, "b": 0.0, "c": 0.0}
    half_score = good(k=3)
    half_score[1]["responses"] = {"a": 1, "b": 0, "c": 0.5}
    not_object = good()
    not_object[1] = ["prompt", "responses"]
    prompt_not_string = good()
    prompt_not_string[2]["prompt"] = ["### Instruction:", "x"]
    one_response = good()
    one_response[1]["responses"] = {"a": 1.0}
    responses_list = good()
    responses_list[0]["responses"] = ["a", "b"]
    return [
        ('[{"prompt": "x", ', None, None, "malformed JSON"),
        ({"prompt": "x", "responses": {"a": 1.0, "b": 0.0}}, None, None, "found dict"),
        ([], None, None, "contains no examples"),
        (not_object, 1, None, "expected an object, found list"),
        (missing_prompt, 1, "prompt", "missing"),
        (prompt_not_string, 2, "prompt", "must be a string"),
        (missing_responses, 2, "responses", "missing"),
        (responses_list, 0, "responses", "must be an object mapping response texts to scores"),
        (one_response, 1, "responses", "has 1 response(s); a pair needs at least 2"),
        (two_best, 1, "responses", "exactly one response must score 1.0, found 2"),
        (no_best, 0, "responses", "exactly one response must score 1.0, found 0"),
        (no_worst, 2, "responses", "must be 1.0 (preferred) or 0.0 (dispreferred), found 0.5"),
        (half_score, 1, "responses", "must be 1.0 (preferred) or 0.0 (dispreferred), found 0.5"),
        (text_score, 1, "responses", "not a number"),
        (bool_score, 1, "responses", "not a number"),
        (mixed, 2, "responses", "has 3 responses but record 0 has 2"),
    ]


@pytest.mark.parametrize("records,record,field,message", _bad_cases())
def test_bad_input_names_file_record_field(
    genies_folder, tmp_path, records, record, field, message
):
    path = _write(genies_folder, records)
    out = tmp_path / "out" / "bad.parquet"
    with pytest.raises(DataError) as err:
        materialise(genies_folder, "bad", "train", out)
    text = str(err.value)
    assert str(path) in text and message in text
    assert err.value.record == record and err.value.field == field
    if record is not None:
        assert f"record {record}" in text
    if field is not None:
        assert f"field '{field}'" in text
    assert not out.exists()
    assert list(out.parent.glob("*")) == [] if out.parent.exists() else True


def test_bad_test_split_also_checked(genies_folder, tmp_path):
    records = good()
    del records[0]["prompt"]
    _write(genies_folder, records, split="test")
    with pytest.raises(DataError, match="test.json, record 0, field 'prompt'"):
        materialise(genies_folder, "bad", "test", tmp_path / "x.parquet")


def test_defect_warnings(genies_folder, tmp_path, caplog):
    same = make_examples(4, 2, 3)
    for ex in same:
        ex["prompt"] = "identical"
    train = make_examples(4, 2, 5)
    test = [train[0], train[0], *make_examples(2, 2, 6)]
    d = genies_folder / "distributions" / "defects"
    d.mkdir()
    (d / "train.json").write_text(json.dumps(same))
    (d / "test.json").write_text(json.dumps(test))
    with caplog.at_level(logging.WARNING):
        w_train = materialise(genies_folder, "defects", "train", tmp_path / "tr.parquet")
    assert w_train == ["all 4 prompts are the same string"]
    (d / "train.json").write_text(json.dumps(train))
    w_test = materialise(genies_folder, "defects", "test", tmp_path / "te.parquet")
    assert "1 duplicate examples (identical prompt and responses)" in w_test
    assert "2 examples also appear in train (train/test overlap)" in w_test
    assert "data defect in defects/train" in caplog.text
    assert read_provenance(tmp_path / "te.parquet")["warnings"] == w_test


def test_missing_location_is_clear(tmp_path):
    with pytest.raises(DataError, match="data location does not exist"):
        RawData(tmp_path / "nowhere")


REAL = Path(__file__).resolve().parent.parent.parent / "shared/genies-data"


@pytest.mark.skipif(not REAL.exists(), reason="real GENIES data not beside the project")
def test_real_data_counts():
    """All 66 real datasets validate, with upstream's example counts."""
    from genies.data.materialise import load_split

    raw = RawData(REAL)
    names = raw.datasets()
    assert len(names) == 66
    totals = {s: sum(load_split(raw, n, s).num_rows for n in names) for s in ("train", "test")}
    assert totals == {"train": 45237, "test": 18996}
