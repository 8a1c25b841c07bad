"""The shared fixtures of tests/conftest.py."""

import torch

# Not torch's default on any machine this runs on (one per core), so the pin is visible.
TORCH_THREADS = 3


def test_module_torch_threads_are_pinned(torch_threads):
    assert torch_threads == TORCH_THREADS
    assert torch.get_num_threads() == TORCH_THREADS


def test_genies_folder_has_the_fixture_datasets(genies_folder):
    assert (genies_folder / "distributions/src_a/train.json").is_file()
    assert (genies_folder / "distribution_shifts/GENIES.json").is_file()
