import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from genies.data.materialise import materialise
from genies.data.stimuli import CONTRAST_QUESTION, stimulus_units
from genies.forward.activations import ActivationCapture, load_activations
from genies.forward.baselines import write_few_shot_examples
from genies.forward.job import resolve_layers, run_few_shot_scores, run_forward
from genies.forward.scoring import score_tokenized
from genies.io import read_provenance
from genies.methods.probes import fit, load_probe_input
from genies.models.loading import load_model
from genies.models.prepare import prepare_model
from genies.models.tokens import tokenize_examples

from .fixtures import make_genies_folder

SCORING = {"batch_tokens": 256, "device": "cpu", "dtype": "float32"}
# What a config with MMS (plain heads), LAT2 (lat2 layers) and CCS (one yes/no layer) asks of
# tgt_b: everything on the test split, only the plain stimulus on train.
WORK = {
    "test": {"plain": {"heads": "all"}, "lat2": {"resid": "all"}, "yesno": {"resid": [-1]}},
    "train": {"plain": {"heads": "all", "resid": "all"}},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("forward")
    data = make_genies_folder(root / "genies")
    for split in ("train", "test"):
        materialise(data, "tgt_b", split, root / f"tgt_b.{split}.parquet")  # k = 3
    materialise(data, "src_a", "train", root / "src_a.train.parquet")
    prepare_model({"source": "tiny", "seed": 0}, root / "tiny")
    return root


def forward(setup, name, work, **kw):
    files = {split: setup / f"tgt_b.{split}.parquet" for split in work}
    run_forward(data_files=files, model_dir=setup / "tiny", scores_path=setup / f"{name}.parquet",
                activations_path=setup / f"{name}.safetensors", model_name="tiny",
                dataset="tgt_b", work=work, scoring=SCORING, job={"threads": 1}, **kw)  # fmt: skip
    return pq.read_table(setup / f"{name}.parquet"), load_activations(setup / f"{name}.safetensors")


@pytest.fixture(scope="module")
def everything(setup, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("scratch")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(scratch))
        out = forward(setup, "all", WORK, limits={"train": 4, "test": None})
    assert list(scratch.iterdir()) == []  # written there, then moved into place
    return out


def test_one_job_runs_every_split_and_stimulus(everything):
    scores, _ = everything
    rows = scores.group_by(["split", "stimulus"]).aggregate([("example_id", "count")])
    got = {(r["split"], r["stimulus"]): r["example_id_count"] for r in rows.to_pylist()}
    # tgt_b test: 6 examples x 3 responses (x 2 answers for yes/no); train capped at 4 examples
    assert got == {("test", "plain"): 18, ("test", "lat2"): 18, ("test", "yesno"): 36,
                   ("train", "plain"): 12}  # fmt: skip
    yesno = scores.filter(pc.field("stimulus") == "yesno").to_pydict()
    assert yesno["answer"][:4] == [0, 1, 0, 1] and yesno["response_index"][:4] == [0, 0, 1, 1]
    assert scores.column("example_id")[0].as_py() == "tgt_b/test/00000"


def test_only_what_a_method_reads_is_stored(everything, setup):
    _, tensors = everything
    assert {name: t.shape for name, t in tensors.items()} == {
        "test/plain/heads": (18, 2, 4, 16),
        "test/lat2/resid": (18, 2, 64),
        "test/yesno/resid": (36, 1, 64),  # only the layer CCS reads
        "train/plain/heads": (12, 2, 4, 16),
        "train/plain/resid": (12, 2, 64),
    }
    full_scores, full = forward(setup, "yesno_all", {"test": {"yesno": {"resid": "all"}}})
    np.testing.assert_array_equal(tensors["test/yesno/resid"][:, 0], full["test/yesno/resid"][:, 1])
    assert all(t.any() for t in tensors.values())
    # the stored subset does not change the scores
    scores, _ = everything
    yes_no = scores.filter(pc.field("stimulus") == "yesno").column("logprob_sum").to_numpy()
    np.testing.assert_allclose(yes_no, full_scores.column("logprob_sum").to_numpy(), atol=1e-9)


def test_provenance_records_the_work_and_every_pass(everything, setup):
    prov = read_provenance(setup / "all.parquet")
    assert prov["params"]["work"] == WORK and prov["dataset"] == "tgt_b"
    assert prov["models"] == {"tiny": {"source": "tiny"}}  # genies.models.loading.model_provenance
    assert set(prov["passes"]) == {"test/plain", "test/lat2", "test/yesno", "train/plain"}
    assert all(p["tokens_unique"] > 0 for p in prov["passes"].values())


def test_few_shot_scores_cover_every_source(setup):
    prompts = setup / "fs.parquet"
    write_few_shot_examples(setup / "tgt_b.test.parquet", setup / "src_a.train.parquet", prompts,
                            n_shots=2, seed=0, eval_limit=3, source_limit=None)  # fmt: skip
    out = setup / "fs_scores.parquet"
    run_few_shot_scores(prompt_files={"src_a": prompts, "tgt_b": prompts},
                        model_dir=setup / "tiny", scores_path=out, model_name="tiny",
                        eval_dataset="tgt_b", scoring=SCORING, job={"threads": 1})  # fmt: skip
    table = pq.read_table(out)
    assert table.column("train").to_pylist() == ["src_a"] * 9 + ["tgt_b"] * 9
    assert set(table.column("stimulus").to_pylist()) == {"few_shot"}
    a, b = (
        table.filter(pc.field("train") == t).column("logprob_sum").to_numpy()
        for t in ("src_a", "tgt_b")
    )
    np.testing.assert_allclose(a, b)


def test_layers_resolve_against_the_model():
    assert resolve_layers([-1, 0, 3, -1], 4) == [0, 3]
    assert resolve_layers("all", 4) == "all"
    with pytest.raises(ValueError, match="outside the model's 4 layers"):
        resolve_layers([4], 4)


def test_stimulus_units():
    prefixes, conts, eos = stimulus_units("yesno", ["P"], [["a", "b"]])
    assert prefixes == [f"Pa{CONTRAST_QUESTION}", f"Pb{CONTRAST_QUESTION}"]
    assert conts == [["Yes", "No"], ["Yes", "No"]] and eos is False
    with pytest.raises(ValueError, match="unknown stimulus"):
        stimulus_units("other", [], [])


def test_ccs_fits_the_same_on_its_one_stored_layer_as_on_all_layers(setup):
    """The forward job stores only the yes/no layer CCS reads; negative layers count from the
    model's last layer, not from the stored ones."""
    params = {"layer": -1, "restarts": 2, "epochs": 20}
    states = []
    for name, layers in (("ccs_one", [-1]), ("ccs_all", "all")):
        forward(setup, name, {"train": {"yesno": {"resid": layers}}})
        states.append(fit("ccs", ccs_input(setup, name), params, seed=0))
    one, every = states
    assert one.info["selected"] == every.info["selected"] == [1]
    for key in ("weight", "bias", "orientation", "centre_yes"):
        np.testing.assert_array_equal(one.tensors[key], every.tensors[key])
    with pytest.raises(ValueError, match="ccs layer 0 is not among the stored layers"):
        fit("ccs", ccs_input(setup, "ccs_one"), {**params, "layer": 0}, seed=0)


def ccs_input(setup, name):
    files = (setup / f"{name}.safetensors", setup / f"{name}.parquet")
    return load_probe_input("ccs", "tgt_b", "train", setup / "tgt_b.train.parquet", *files)


def test_activations_are_read_at_the_last_response_token_or_the_eos(setup):
    """last_token (default) reads the token before the EOS that log-prob scoring appends,
    which is what reading the response without EOS gives; eos reads the appended EOS."""
    work = {"test": {"plain": {"resid": "all"}}}
    _, last = forward(setup, "read_last", work)
    scoring = {**SCORING, "activation_token": "eos"}
    run_forward(data_files={"test": setup / "tgt_b.test.parquet"}, model_dir=setup / "tiny",
                scores_path=setup / "read_eos.parquet",
                activations_path=setup / "read_eos.safetensors", model_name="tiny",
                dataset="tgt_b", work=work, scoring=scoring, job={"threads": 1})  # fmt: skip
    eos = load_activations(setup / "read_eos.safetensors")["test/plain/resid"]
    loaded = load_model(setup / "tiny", device="cpu", dtype="float32")
    cols = pq.read_table(setup / "tgt_b.test.parquet").to_pydict()
    prompts, responses = tokenize_examples(
        loaded.tokenizer, cols["prompt"], cols["responses"], append_eos=False
    )
    bare = np.zeros_like(eos)
    capture = ActivationCapture(loaded.model, loaded.layout["num_heads"])
    capture.target(resid=bare)
    score_tokenized(loaded.model, prompts, responses, batch_tokens=256, capture=capture)
    capture.remove()
    np.testing.assert_array_equal(last["test/plain/resid"], bare)
    assert not np.array_equal(eos, bare)
