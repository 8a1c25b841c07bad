"""Fixtures shared by the test modules.

Torch threads: a module that sets `TORCH_THREADS = n` runs its tests with torch pinned to n
threads (restored afterwards). Tiny models run fastest on one or two threads and stay fast
on a busy machine, where torch's default (every core) makes them contend.
"""

from __future__ import annotations

import pytest

from .fixtures import make_genies_folder


@pytest.fixture(scope="module", autouse=True)
def torch_threads(request):
    """Pin torch to the module's TORCH_THREADS for the module (no-op when it sets none)."""
    threads = getattr(request.module, "TORCH_THREADS", None)
    if threads is None:
        yield None
        return
    import torch  # only modules that use torch pay for importing it

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def genies_folder(tmp_path):
    """A small GENIES-format data folder with upstream leftovers (tests/fixtures.py)."""
    return make_genies_folder(tmp_path / "genies")
