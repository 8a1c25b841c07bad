"""Fixtures shared by the test modules.

Torch threads: a module that sets `TORCH_THREADS = n` runs its tests with torch pinned to n
threads (restored afterwards). Tiny models run fastest on one or two threads and stay fast
on a busy machine, where torch's default (every core) makes them contend.

Fake devices: a test that takes the `fake_devices` fixture gets tests/fakedev.py, whose pretend
GPUs must be registered before the process's first backward pass (the autograd engine sizes its
device queues then): that happens right after collection, before any test runs.
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


def pytest_collection_finish(session):
    if any("fake_devices" in getattr(item, "fixturenames", ()) for item in session.items):
        from . import fakedev

        if not fakedev.MISSING:
            fakedev.register()


@pytest.fixture
def fake_devices():
    """tests/fakedev.py; skipped only where this PyTorch lacks the private APIs it uses."""
    from . import fakedev

    if fakedev.UNAVAILABLE:
        pytest.skip(fakedev.UNAVAILABLE)
    return fakedev


@pytest.fixture
def genies_folder(tmp_path):
    """A small GENIES-format data folder with upstream leftovers (tests/fixtures.py)."""
    return make_genies_folder(tmp_path / "genies")
