"""The static per-example viewer: its files, the changed-from-zero-shot pairs, escaping."""

from __future__ import annotations

import json
import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genies.data.materialise import examples_table
from genies.data.predictions import expand_pairs, predictions_table, read_predictions
from genies.data.shifts import Shift, shifts_table
from genies.errors import GeniesError
from genies.io import write_parquet
from genies.results.aggregate import build_database
from genies.results.viewer import BROKEN, FIXED, SAME, pair_changes, shift_file_name, write_viewer

from .fixtures import make_examples

MODEL = "m"
SHIFTS = [
    Shift("src_a", "tgt_b", "tgt_b", label="extreme", category="skill"),
    Shift("src_a", "tgt_c", "ref_d", label="probing", category="unwanted_personas"),
]
# dataset -> (examples, responses per example, seed)
DATA = {"src_a": (4, 2, 1), "tgt_b": (5, 3, 2), "tgt_c": (4, 2, 3), "ref_d": (3, 4, 4)}
# Text a browser must show as text: HTML that would run or format, an entity, a line separator.
HOSTILE_PROMPT = (
    '<script>document.title = "pwned"</script></script><b>bold</b> &amp; **markdown** '
    "`code` \u2028 done"
)
HOSTILE_RESPONSE = "<img src=x onerror=alert(1)> <!-- comment -->"


def write_data(root) -> list:
    files = []
    for dataset, (n, k, seed) in DATA.items():
        table = examples_table(dataset, "test", make_examples(n, k, seed))
        if dataset == "tgt_b":  # example 0: text full of markup
            prompts = table.column("prompt").to_pylist()
            responses = table.column("responses").to_pylist()
            prompts[0] = HOSTILE_PROMPT
            responses[0][1] = HOSTILE_RESPONSE
            for name, values in (("prompt", prompts), ("responses", responses)):
                index = table.schema.get_field_index(name)
                field = table.schema.field(index)
                table = table.set_column(index, field, pa.array(values, field.type))
        path = root / f"results/data/{dataset}/test.parquet"
        write_parquet(table, path, {"job": "materialise", "dataset": dataset, "split": "test"})
        files.append(path)
    return files


def flags(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < 0.5


def group(
    root, model, intervention, train, eval_dataset, seed, keep=None, extra_pair=False, correct=None
):
    """Predictions of one group on the materialised pairs (`correct`: their flags, else random);
    `keep`: only these example rows."""
    examples = pq.read_table(root / f"results/data/{eval_dataset}/test.parquet")
    if keep is not None:
        examples = examples.take(keep)
    pairs = expand_pairs(examples)
    pairs.pop("example_row")
    if extra_pair:  # a published pair that matches none of this workflow's examples
        for key, value in (
            ("example_id", "elsewhere/test/9"),
            ("pair_index", 0),
            ("preferred_response", 0),
            ("dispreferred_response", 1),
        ):
            pairs[key] = np.append(pairs[key], np.array([value], pairs[key].dtype))
    n = len(pairs["example_id"])
    correct = flags(n, seed) if correct is None else np.asarray(correct, bool)
    rng = np.random.default_rng(seed + 100)
    prob = np.where(
        correct, rng.uniform(0.5001, 0.99, len(correct)), rng.uniform(0.01, 0.5, len(correct))
    )
    return predictions_table(model, intervention, train, eval_dataset, pairs, prob, correct)


def build_fixture(root):
    """A results/ folder: data, predictions of m (and of m2, m@published, other@published), db."""
    data_files = write_data(root)
    # tgt_b (5 examples, 2 pairs each): mms gets examples 1, 2 and 4 wrong; against zero-shot
    # it fixes pair 0 of example 0 and pair 1 of example 4, and breaks pair 1 of 1 and of 2.
    zero_shot_b = [0, 1, 1, 1, 0, 1, 1, 1, 0, 0]
    mms_b = [1, 1, 1, 0, 0, 0, 1, 1, 0, 1]
    groups = []
    for i, dataset in enumerate(DATA):
        fixed = zero_shot_b if dataset == "tgt_b" else None
        groups.append(group(root, MODEL, "zero_shot", "none", dataset, seed=i, correct=fixed))
    groups += [
        group(root, MODEL, "mms", "src_a", "tgt_b", seed=10, correct=mms_b),
        group(root, MODEL, "mms", "src_a", "tgt_c", seed=11),
        # mms trained on the target (the ID target group): never the shift's generalisation.
        group(root, MODEL, "mms", "tgt_b", "tgt_b", seed=12),
        # the model scored only 3 of tgt_c's 4 examples with lora
        group(root, MODEL, "lora", "src_a", "tgt_c", seed=13, keep=[0, 2, 3]),
        group(root, "m2", "zero_shot", "none", "tgt_b", seed=14),
        group(root, "m@published", "zero_shot", "none", "tgt_b", seed=15),
        group(root, "m@published", "mms", "src_a", "tgt_b", seed=16, extra_pair=True),
        group(root, "other@published", "zero_shot", "none", "tgt_b", seed=17),
    ]
    files = []
    for table in groups:
        row = table.slice(0, 1).to_pylist()[0]
        path = root / "results/predictions/{model}/{intervention}/{train}/{eval}.parquet".format(
            **row
        )
        write_parquet(table, path, {"job": "predict", "model": row["model"]})
        files.append(path)
    shifts_file = root / "results/shifts.parquet"
    pq.write_table(shifts_table(SHIFTS), shifts_file)
    database = root / "results/results.duckdb"
    build_database(
        database,
        shifts_file=shifts_file,
        data_files=data_files,
        predictions=read_predictions(files),
        run_files=files,
        capability_interventions=["zero_shot"],
    )
    return database, data_files


def read_data_script(path) -> tuple[str, dict]:
    text = path.read_text(encoding="utf-8")
    first, second = text.splitlines()
    assert first == "window.GENIES_VIEWER_DATA = window.GENIES_VIEWER_DATA || {};"
    key, value = second.split(" = ", 1)
    shift_id = json.loads(key.removeprefix("window.GENIES_VIEWER_DATA[").removesuffix("]"))
    return shift_id, json.loads(value.removesuffix(";"))


def manifest_of(index_html: str) -> dict:
    start = index_html.index('<script type="application/json" id="genies-manifest">')
    body = index_html[start:].split(">", 1)[1].split("</script>", 1)[0]
    return json.loads(body)


def query(database, sql, params=()):
    con = duckdb.connect(str(database), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer")
    database, data_files = build_fixture(root)
    out = root / "results/viewer" / MODEL
    stats = write_viewer(database, data_files, MODEL, out)
    return root, database, data_files, out, stats


def shift_data(out, index):
    shift_id = SHIFTS[index].shift_id
    return read_data_script(out / shift_file_name(index, shift_id))


def results_of(data) -> dict:
    return {(r["model"], r["intervention"]): r for r in data["results"]}


def test_one_data_file_per_shift_and_a_manifest(viewer):
    _, _, _, out, stats = viewer
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [
        "data/000_src_a__tgt_b.js",
        "data/001_src_a__tgt_c.js",
        "index.html",
    ]
    assert stats["shifts"] == 2 and stats["largest"] < 1e6
    manifest = manifest_of((out / "index.html").read_text(encoding="utf-8"))
    assert manifest["model"] == MODEL
    assert [s["shift_id"] for s in manifest["shifts"]] == ["src_a__tgt_b", "src_a__tgt_c"]
    assert [s["file"] for s in manifest["shifts"]] == files[:2]
    assert [(s["examples"], s["pairs"]) for s in manifest["shifts"]] == [(5, 10), (4, 4)]
    assert manifest["interventions"] == ["zero_shot", "lora", "mms"]
    # The matching published model is shown by default; every published model is offered.
    assert manifest["published"] == ["m@published", "other@published"]
    assert manifest["published_shown"] == ["m@published"]
    # No temporary directory is left beside the output.
    assert sorted(p.name for p in out.parent.iterdir()) == [MODEL]
    for shift_id, index in (("src_a__tgt_b", 0), ("src_a__tgt_c", 1)):
        assert shift_data(out, index)[0] == shift_id


def test_examples_are_the_scored_target_examples_in_data_order(viewer):
    root, database, _, out, _ = viewer
    _, data = shift_data(out, 1)
    table = pq.read_table(root / "results/data/tgt_c/test.parquet").to_pylist()
    assert [e["id"] for e in data["examples"]] == [r["example_id"] for r in table]
    for shown, row in zip(data["examples"], table, strict=True):
        assert shown["prompt"] == row["prompt"] and shown["responses"] == row["responses"]
        assert (shown["preferred"], shown["dispreferred"]) == (
            row["preferred"],
            row["dispreferred"],
        )
    assert data["shift"] == {
        "shift_id": "src_a__tgt_c",
        "source": "src_a",
        "target": "tgt_c",
        "target_reference": "ref_d",
        "label": "probing",
    }
    # lora scored 3 of the 4 examples: the fourth's probability is missing, not invented.
    lora = results_of(data)[(MODEL, "lora")]
    assert lora["prob"][1] is None and lora["correct"][1] is None and lora["pairs"] == 3


def test_probabilities_are_the_generalisation_groups(viewer):
    _, database, _, out, _ = viewer
    _, data = shift_data(out, 0)
    results = results_of(data)
    assert list(results) == [
        (MODEL, "zero_shot"),
        (MODEL, "mms"),
        ("m@published", "zero_shot"),
        ("m@published", "mms"),
        ("other@published", "zero_shot"),
    ]
    flat = [(e["id"], k) for e in data["examples"] for k in range(len(e["dispreferred"]))]
    for (model, intervention), train in (
        ((MODEL, "zero_shot"), "none"),
        ((MODEL, "mms"), "src_a"),  # not the tgt_b-trained (ID target) predictions
        (("m@published", "mms"), "src_a"),
    ):
        rows = query(
            database,
            "select example_id, pair_index, prob_preferred, correct from predictions"
            " where model = ? and intervention = ? and train = ? and eval = 'tgt_b'",
            [model, intervention, train],
        )
        expected = {(e, k): (p, c) for e, k, p, c in rows if (e, k) in set(flat)}
        r = results[(model, intervention)]
        got = {key: (p, bool(c)) for key, p, c in zip(flat, r["prob"], r["correct"], strict=True)}
        assert got.keys() == expected.keys()
        for key, (p, c) in expected.items():
            assert got[key][0] == pytest.approx(p, abs=1e-6) and got[key][1] == c
    mms = results[(MODEL, "mms")]
    (accuracy, de), *_ = query(
        database,
        "select generalization_accuracy, differential_elicitation from cells"
        " where model = ? and intervention = 'mms' and shift_id = 'src_a__tgt_b'",
        [MODEL],
    )
    assert mms["accuracy"] == pytest.approx(accuracy) and mms["cell_accuracy"] == accuracy
    assert mms["differential_elicitation"] == pytest.approx(de)
    # The published pair that matches none of the model's examples is counted, not shown.
    assert results[("m@published", "mms")]["unmatched_pairs"] == 1
    assert results[("m@published", "zero_shot")]["unmatched_pairs"] == 0


def test_changes_from_zero_shot(viewer):
    _, _, _, out, _ = viewer
    for index in (0, 1):
        _, data = shift_data(out, index)
        results = results_of(data)
        for (model, intervention), r in results.items():
            if intervention == "zero_shot":
                assert set(r["change"]) == {None} and r["fixed"] == r["broken"] == 0
                continue
            base = results[(model, "zero_shot")]["correct"]
            expected = [
                None if b is None or c is None else (c - b)  # 1 fixed, -1 broken, 0 same
                for b, c in zip(base, r["correct"], strict=True)
            ]
            assert r["change"] == expected
            assert r["fixed"] == expected.count(1) and r["broken"] == expected.count(-1)
    # By hand, for the flags the fixture sets.
    _, data = shift_data(out, 0)
    mms = results_of(data)[(MODEL, "mms")]
    assert mms["change"] == [1, 0, 0, -1, 0, -1, 0, 0, 0, 1]
    assert (mms["fixed"], mms["broken"]) == (2, 2)


def test_pair_changes_hand_computed():
    base = [True, True, False, False, None, True]
    new = [True, False, True, False, True, None]
    assert pair_changes(base, new) == [SAME, BROKEN, FIXED, SAME, None, None]
    assert (FIXED, BROKEN, SAME) == (1, -1, 0)
    with pytest.raises(ValueError):
        pair_changes([True], [True, False])


def test_text_is_escaped(viewer):
    _, _, _, out, _ = viewer
    raw = (out / shift_file_name(0, "src_a__tgt_b")).read_text(encoding="utf-8")
    # No markup survives into the script: it cannot end a <script> element or open a tag.
    assert "<" not in raw and ">" not in raw and "\u2028" not in raw
    _, data = read_data_script(out / shift_file_name(0, "src_a__tgt_b"))
    hostile = data["examples"][0]
    assert hostile["prompt"] == HOSTILE_PROMPT and hostile["responses"][1] == HOSTILE_RESPONSE
    html = (out / "index.html").read_text(encoding="utf-8")
    # The page's own two <script> elements are the only ones; the JS inserts text as text.
    assert html.count("<script") == 2 and html.count("</script>") == 2
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html


def test_shift_ids_become_safe_file_names():
    assert shift_file_name(3, "a b/../c") == "data/003_a_b_.._c.js"
    assert shift_file_name(12, "src_a__tgt-b.v2") == "data/012_src_a__tgt-b.v2.js"


def test_rewrite_replaces_the_folder_and_other_models(viewer, tmp_path):
    _, database, data_files, _, _ = viewer
    out = tmp_path / "viewer/m"
    out.mkdir(parents=True)
    (out / "stale.js").write_text("old")
    write_viewer(database, data_files, MODEL, out)
    assert not (out / "stale.js").exists() and (out / "index.html").exists()
    assert sorted(os.listdir(out.parent)) == ["m"]

    # Another model: no published model of its own name, so every published model is shown.
    write_viewer(database, data_files, "m2", tmp_path / "viewer/m2")
    manifest = manifest_of((tmp_path / "viewer/m2/index.html").read_text(encoding="utf-8"))
    assert manifest["published_shown"] == ["m@published", "other@published"]
    _, data = read_data_script(tmp_path / "viewer/m2" / shift_file_name(0, "src_a__tgt_b"))
    assert len(data["examples"]) == 5
    assert {r["model"] for r in data["results"]} == {"m2", "m@published", "other@published"}
    # m2 has no predictions on tgt_c: the shift is listed with no examples.
    _, data = read_data_script(tmp_path / "viewer/m2" / shift_file_name(1, "src_a__tgt_c"))
    assert data["examples"] == []


def test_model_without_cells_gets_an_empty_viewer(viewer, tmp_path):
    _, database, data_files, _, _ = viewer
    # A name with markup, to check the inline manifest too.
    name = "absent</script><em id=x>"
    stats = write_viewer(database, data_files, name, tmp_path / "absent")
    assert stats["shifts"] == 0
    html = (tmp_path / "absent/index.html").read_text(encoding="utf-8")
    assert html.count("</script>") == 2 and "<em id=x>" not in html
    manifest = manifest_of(html)
    assert manifest["shifts"] == [] and manifest["model"] == name


def test_missing_data_file_is_a_clear_error(viewer, tmp_path):
    _, database, data_files, _, _ = viewer
    without = [f for f in data_files if "tgt_c" not in str(f)]
    with pytest.raises(GeniesError, match=r"no data file for tgt_c/test"):
        write_viewer(database, without, MODEL, tmp_path / "out")
    assert not (tmp_path / "out").exists()
