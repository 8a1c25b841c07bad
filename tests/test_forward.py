import pyarrow.parquet as pq
import pytest

from genies.activations import load_activations
from genies.data import materialise
from genies.forward import run_forward
from genies.models import prepare_model
from genies.stimuli import CONTRAST_QUESTION, stimulus_units

from .fixtures import make_genies_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("forward")
    data = make_genies_folder(root / "genies")
    materialise(data, "tgt_b", "test", root / "tgt_b.parquet")  # 6 examples, k = 3
    prepare_model({"source": "tiny", "seed": 0}, root / "tiny")
    return root


@pytest.mark.parametrize("stimulus,rows", [("plain", 18), ("lat2", 18), ("yesno", 36)])
def test_forward_stimuli(setup, stimulus, rows):
    out = setup / f"{stimulus}.parquet"
    acts = setup / f"{stimulus}.safetensors"
    run_forward(
        data_file=setup / "tgt_b.parquet",
        model_dir=setup / "tiny",
        out_path=out,
        activations_path=acts,
        model_name="tiny",
        dataset="tgt_b",
        split="test",
        stimulus=stimulus,
        batch_tokens=256,
        device="cpu",
        dtype="float32",
        threads=1,
    )
    table = pq.read_table(out).to_pydict()
    assert len(table["example_id"]) == rows
    assert table["example_id"][0] == "tgt_b/test/00000"
    if stimulus == "yesno":
        assert table["answer"][:4] == [0, 1, 0, 1] and table["response_index"][:4] == [0, 0, 1, 1]
    tensors = load_activations(acts)
    assert tensors["resid"].shape == (rows, 2, 64)
    assert tensors["heads"].shape == (rows, 2, 4, 16)
    assert tensors["resid"].any()


def test_stimulus_units():
    prefixes, conts, eos = stimulus_units("yesno", ["P"], [["a", "b"]])
    assert prefixes == [f"Pa{CONTRAST_QUESTION}", f"Pb{CONTRAST_QUESTION}"]
    assert conts == [["Yes", "No"], ["Yes", "No"]] and eos is False
    with pytest.raises(ValueError, match="unknown stimulus"):
        stimulus_units("other", [], [])
