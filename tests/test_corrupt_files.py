"""Every error names its file, with the record and field where there is one, and for a file the
workflow wrote, how to rebuild it: truncated activations and probe states, lone surrogates and
duplicate keys in the data, undecodable or empty published files, corrupt Parquet."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest
from safetensors.numpy import save_file

from genies.data.materialise import materialise, read_examples
from genies.data.predictions import PREDICTION_SCHEMA, read_predictions
from genies.data.shifts import load_shifts
from genies.errors import CorruptFileError, DataError
from genies.forward.activations import load_activations
from genies.io import read_json, read_provenance, write_parquet
from genies.methods.probes import ProbeState, load_state, read_activations, save_state
from genies.models.layout import SafetensorsError
from genies.results import published

from .fixtures import make_genies_folder
from .test_published import write_published


def activation_file(path):
    save_file({"test/plain/heads": np.ones((4, 2, 3, 5), np.float16)}, str(path))
    return path


def advice(path, rule) -> str:
    return re.escape(
        f"delete {path} and run again to rebuild it (or rebuild with `--forcerun {rule}`)"
    )


# ------------------------------------------------------------------------------ safetensors


@pytest.mark.parametrize("cut", ["empty", "header", "data"])
def test_a_truncated_activation_file(tmp_path, cut):
    path = activation_file(tmp_path / "ds.safetensors")
    size = {"empty": 0, "header": 20, "data": path.stat().st_size - 10}[cut]
    with open(path, "r+b") as f:
        f.truncate(size)
    for read in (
        lambda: read_activations(path, "test/plain/heads"),
        lambda: load_activations(path),
    ):
        with pytest.raises(
            SafetensorsError, match=f"^{re.escape(str(path))}: .*" + advice(path, "forward")
        ):
            read()


def test_an_activation_header_that_does_not_match_its_shape(tmp_path):
    path = activation_file(tmp_path / "ds.safetensors")
    raw = path.read_bytes()
    assert raw.count(b"[4,2,3,5]") == 1
    path.write_bytes(raw.replace(b"[4,2,3,5]", b"[4,2,3,6]"))  # 48 more values than stored
    with pytest.raises(SafetensorsError, match="needs 288 bytes, but its header gives it 240"):
        read_activations(path, "test/plain/heads")


def test_a_truncated_or_corrupt_probe_state(tmp_path):
    tensors, info = tmp_path / "src.safetensors", tmp_path / "src.json"
    state = ProbeState("mms", "src", 0, {"n_units": 2}, {"directions": np.ones((2, 3))}, {})
    save_state(state, tensors, info)
    assert load_state(tensors, info).params == {"n_units": 2}
    with open(tensors, "r+b") as f:
        f.truncate(30)
    with pytest.raises(SafetensorsError, match=advice(tensors, "fit_probe")):
        load_state(tensors, info)
    info.write_text('{"method": "mms", ')
    with pytest.raises(
        CorruptFileError,
        match=f"{re.escape(str(info))}: malformed JSON.*" + advice(info, "fit_probe"),
    ):
        load_state(tensors, info)


# ------------------------------------------------------------------------------------- data


def data_folder(tmp_path, test_json: str):
    folder = tmp_path / "genies"
    (folder / "distributions" / "bad").mkdir(parents=True)
    good = [{"prompt": "p", "responses": {"a": 1.0, "b": 0.0}}]
    (folder / "distributions" / "bad" / "train.json").write_text(json.dumps(good))
    (folder / "distributions" / "bad" / "test.json").write_text(test_json)
    return folder


@pytest.mark.parametrize(
    "record, field",
    [
        ('{"prompt": "p\\ud800", "responses": {"a": 1.0, "b": 0.0}}', "prompt"),
        ('{"prompt": "p", "responses": {"a": 1.0, "b\\udc80": 0.0}}', "responses[1]"),
        ('{"prompt": "p", "responses": {"a": 1.0, "b": 0.0}, "source": ["\\ud83d"]}', "source"),
    ],
)
def test_a_lone_surrogate_names_record_and_field(tmp_path, record, field):
    folder = data_folder(
        tmp_path, f'[{{"prompt": "ok", "responses": {{"a": 1.0, "b": 0.0}}}}, {record}]'
    )
    where = folder / "distributions" / "bad" / "test.json"
    with pytest.raises(
        DataError, match=re.escape(f"{where}, record 1, field '{field}': contains a lone surrogate")
    ):
        materialise(folder, "bad", "test", tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_a_key_twice_in_one_object_is_an_error(tmp_path):
    twice = json.dumps([{"prompt": "p", "responses": {"a": 1.0, "b": 0.0}}])[:-1]
    twice += ', {"prompt": "p", "responses": {"same": 1.0, "same": 0.0}}]'
    where = data_folder(tmp_path, twice) / "distributions" / "bad" / "test.json"
    with pytest.raises(
        DataError,
        match=re.escape(f"{where}, record 1, field 'responses': key 'same' appears twice"),
    ):
        materialise(tmp_path / "genies", "bad", "test", tmp_path / "out.parquet")
    where.write_text('[{"prompt": "p", "prompt": "q", "responses": {"a": 1.0, "b": 0.0}}]')
    with pytest.raises(
        DataError, match=re.escape(f"{where}, record 0, field 'prompt': key 'prompt' appears twice")
    ):
        materialise(tmp_path / "genies", "bad", "test", tmp_path / "out.parquet")


def test_a_shift_file_with_a_key_twice(tmp_path):
    folder = make_genies_folder(tmp_path / "genies")
    mine = tmp_path / "mine.json"
    mine.write_text('[{"source": "src_a", "target": "tgt_b", "target": "tgt_c"}]')
    with pytest.raises(
        DataError, match=re.escape(f"{mine}, record 0, field 'target': key 'target' appears twice")
    ):
        load_shifts(str(mine), folder)


@pytest.mark.parametrize(
    "content, problem",
    [(b"", "the file is empty"), (b"\xff\xfe{}", "not UTF-8 text"), (b"  \n", "the file is empty")],
)
def test_undecodable_or_empty_json_names_the_file(tmp_path, content, problem):
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(f"{path}: {problem}")):
        read_json(path)


@pytest.mark.parametrize(
    "which",
    ["evaluations/mms/llama-7b-src_a/tgt_b.json", "target_tuned_capability/llama-7b/tgt_b.json"],
)
@pytest.mark.parametrize(
    "content, problem",
    [(b"", "the file is empty"), (b'{"eval_accuracy": 0.5, "\xe9": 1}', "not UTF-8 text")],
)
def test_an_undecodable_or_empty_published_file(tmp_path, which, content, problem):
    data = make_genies_folder(tmp_path / "data")
    folder = write_published(tmp_path / "results")
    (folder / which).write_bytes(content)
    paths = {name: tmp_path / "out" / f"{name}.parquet" for name in published.OUTPUTS}
    with pytest.raises(DataError, match=re.escape(f"{folder / which}: {problem}")):
        published.import_published(folder, data, paths)


# ----------------------------------------------------------------------------------- parquet


def test_a_corrupt_data_file_names_itself_and_its_rebuild(tmp_path):
    path = tmp_path / "results" / "data" / "ds" / "test.parquet"
    write_parquet(pa.table({"x": [1, 2, 3]}), path)
    path.write_bytes(path.read_bytes()[:-20])  # its footer cut off
    with pytest.raises(
        CorruptFileError,
        match=f"^{re.escape(str(path))}: not a readable Parquet file .*"
        + advice(path, "materialise"),
    ):
        read_examples(path)
    with pytest.raises(CorruptFileError, match=re.escape(f"delete {path}")):
        read_provenance(path)


def test_a_corrupt_prediction_file_among_good_ones(tmp_path):
    files = [tmp_path / f"{i}.parquet" for i in range(3)]
    for f in files:
        write_parquet(PREDICTION_SCHEMA.empty_table(), f)
    assert read_predictions(files).num_rows == 0
    files[1].write_bytes(b"PAR1 not parquet at all")
    with pytest.raises(
        CorruptFileError, match=f"^{re.escape(str(files[1]))}: not a readable Parquet"
    ):
        read_predictions(files)
