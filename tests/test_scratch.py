"""Scratch space for activation files (genies.scratch): where they go, and whether it has room,
with simulated free space, a fake mount table and fake memory cgroups; a real small tmpfs
when this machine lets the test mount one (root)."""

from __future__ import annotations

import os
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from genies import scratch
from genies.data.materialise import materialise
from genies.forward import job as forward_job
from genies.forward.activations import ActivationWriter, load_activations
from genies.forward.job import run_forward
from genies.models.layout import read_safetensors_header
from genies.models.prepare import prepare_model
from genies.pipeline.cluster import activation_file_bytes

from .fixtures import make_genies_folder

GB = 10**9


def mounts_text(*entries) -> str:
    """A /proc/mounts text: (mount point, type) pairs after an ext4 root."""
    lines = ["/dev/vda / ext4 rw,relatime 0 0", "proc /proc proc rw 0 0"]
    lines += [f"none {point} {fstype} rw,relatime 0 0" for point, fstype in entries]
    return "\n".join(lines) + "\n"


class FreeSpace:
    """Simulated file systems: free bytes and a device number per directory."""

    def __init__(self):
        self.free, self.device = {}, {}

    def set(self, path, free: int, device: int | None = None) -> None:
        key = os.path.realpath(path)
        self.free[key] = free
        self.device[key] = len(self.device) + 100 if device is None else device


class _Stat:
    """A stat result on another device."""

    def __init__(self, real, device: int):
        self._real, self.st_dev = real, device

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def free_space(monkeypatch):
    """os.statvfs and os.stat (as genies.scratch calls them) report a `FreeSpace` figure for
    each directory set in it; each is its own file system unless given the same device."""
    fake = FreeSpace()
    real_statvfs, real_stat = os.statvfs, os.stat

    def statvfs(path):
        key = os.path.realpath(path)
        if key in fake.free:
            return SimpleNamespace(f_bavail=fake.free[key] // 4096, f_frsize=4096)
        return real_statvfs(path)

    def stat(path, *args, **kwargs):
        result = real_stat(path, *args, **kwargs)
        key = os.path.realpath(path) if isinstance(path, (str, os.PathLike)) else None
        return _Stat(result, fake.device[key]) if key in fake.device else result

    monkeypatch.setattr(scratch.os, "statvfs", statvfs)
    monkeypatch.setattr(scratch.os, "stat", stat)
    return fake


@pytest.fixture
def places(tmp_path, free_space, monkeypatch):
    """An output folder with 100 GB free and a scratch folder, $TMPDIR pointing at it."""
    out, tmp = tmp_path / "results", tmp_path / "node-tmp"
    out.mkdir()
    tmp.mkdir()
    free_space.set(out, 100 * GB)
    monkeypatch.setenv("TMPDIR", str(tmp))
    return SimpleNamespace(out=out, tmp=tmp, free=free_space)


# ------------------------------------------------------------------ the mount table


def test_mount_of_takes_the_longest_mount_point_and_unescapes_it(tmp_path):
    table = mounts_text(
        ("/dev/shm", "tmpfs"), ("/scratch", "lustre"), ("/scratch/my\\040job", "tmpfs")
    )
    assert scratch.mount_of("/dev/shm/a/b", table) == ("/dev/shm", "tmpfs")
    assert scratch.mount_of("/scratch/x", table) == ("/scratch", "lustre")
    assert scratch.mount_of("/scratch/my job/f", table) == ("/scratch/my job", "tmpfs")
    assert scratch.mount_of("/scratchy", table) == ("/", "ext4")  # a prefix is not a parent
    assert scratch.mount_of(tmp_path, "") == ("/", "unknown")
    # mounted twice on one point: the last mount is the one seen
    assert (
        scratch.mount_of("/tmp/x", mounts_text(("/tmp", "ext4"), ("/tmp", "tmpfs")))[1] == "tmpfs"
    )


def test_scratch_in_memory_is_judged_from_the_setting_or_tmpdir(monkeypatch):
    table = mounts_text(("/dev/shm", "tmpfs"), ("/local", "xfs"))
    monkeypatch.setenv("TMPDIR", "/dev/shm/job")
    assert scratch.scratch_in_memory(None, table)
    assert not scratch.scratch_in_memory("/local/$USER", table)
    monkeypatch.setenv("NODE_RAM", "/dev/shm")
    assert scratch.scratch_in_memory("$NODE_RAM/genies", table)
    monkeypatch.delenv("TMPDIR")
    assert not scratch.scratch_in_memory(None, table)  # beside the output
    assert not scratch.scratch_in_memory("$UNSET_HERE/x", table)  # unknown here


# ------------------------------------------------------------------ memory cgroups


def _write(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_memory_allowance_reads_cgroup_v2(tmp_path):
    root = tmp_path / "cgroup"
    job = root / "slurm/job_7"
    # the job's limit (20 GB) is on a parent of the task's cgroup, which has none
    _write(job, memory_max=str(20 * GB), memory_current=str(6 * GB),
           memory_stat=f"anon {3 * GB}\nfile {3 * GB}\nshmem {GB}\n")  # fmt: skip
    _write(job / "step_0/task_0", memory_max="max", memory_current=str(5 * GB))
    proc = tmp_path / "cgroup.txt"
    proc.write_text("0::/slurm/job_7/step_0/task_0\n")
    # 20 - 6 GB in use, of which 2 GB page cache of files can be reclaimed (tmpfs cannot)
    assert scratch.memory_allowance(root, proc) == 16 * GB
    (job / "memory.max").write_text("max")
    assert scratch.memory_allowance(root, proc) is None  # no limit anywhere


def test_memory_allowance_reads_cgroup_v1(tmp_path):
    root = tmp_path / "cgroup"
    job = root / "memory/slurm/uid_0/job_9"
    _write(job, memory_limit_in_bytes=str(8 * GB), memory_usage_in_bytes=str(5 * GB),
           memory_stat=f"cache {GB}\ntotal_cache {2 * GB}\ntotal_shmem {2 * GB}\n")  # fmt: skip
    _write(root / "memory", memory_limit_in_bytes="9223372036854771712")
    proc = tmp_path / "cgroup.txt"
    proc.write_text("5:cpuset:/\n4:memory:/slurm/uid_0/job_9\n0::/\n")
    assert scratch.memory_allowance(root, proc) == 3 * GB  # tmpfs pages are not reclaimable
    assert scratch.memory_allowance(root, tmp_path / "missing") is None


# ------------------------------------------------------------------ choosing the folder


def test_tmpdir_with_room_is_used(places):
    places.free.set(places.tmp, 50 * GB)
    assert scratch.choose_scratch(12 * GB, None, places.out, mounts_text()) == places.tmp


def test_a_tmpfs_tmpdir_that_the_job_memory_cannot_hold_falls_back_beside_the_output(
    places, caplog
):
    table = mounts_text((str(places.tmp), "tmpfs"))
    places.free.set(places.tmp, 60 * GB)  # a tmpfs of half the node's memory, mostly free
    # the job asked for 16 GB and holds 5: a 12 GB file would get it killed
    chosen = scratch.choose_scratch(12 * GB, None, places.out, table, allowance=11 * GB)
    assert chosen is None
    assert "is memory, and the job's memory limit leaves 11.0 GB" in caplog.text
    assert f"writing the file beside its output in {places.out}" in caplog.text
    # the memory request counted the file (a tmpfs seen where Snakemake ran): it is used
    assert scratch.choose_scratch(12 * GB, None, places.out, table, allowance=25 * GB)
    # no readable limit: the tmpfs's own free space decides
    assert scratch.choose_scratch(12 * GB, None, places.out, table, allowance=None)


def test_a_full_tmpdir_falls_back_and_a_missing_one_is_ignored(places, monkeypatch):
    places.free.set(places.tmp, 3 * GB)
    assert scratch.choose_scratch(12 * GB, None, places.out, mounts_text()) is None
    monkeypatch.setenv("TMPDIR", str(places.tmp / "gone"))
    assert scratch.choose_scratch(12 * GB, None, places.out, mounts_text()) is None
    monkeypatch.delenv("TMPDIR")
    assert scratch.choose_scratch(12 * GB, None, places.out, mounts_text()) is None


def test_an_explicit_scratch_dir_without_room_fails_before_writing(places, monkeypatch):
    local = places.tmp / "local"
    local.mkdir()
    places.free.set(local, 5 * GB)
    monkeypatch.setenv("LOCAL", str(places.tmp))
    with pytest.raises(scratch.ScratchError, match=r"scratch_dir '\$LOCAL/local': .*5\.0 GB free"):
        scratch.choose_scratch(12 * GB, "$LOCAL/local", places.out, mounts_text())
    places.free.set(local, 50 * GB)
    assert scratch.choose_scratch(12 * GB, "$LOCAL/local", places.out, mounts_text()) == local
    with pytest.raises(scratch.ScratchError, match="is not a directory on this node"):
        scratch.choose_scratch(12 * GB, str(places.tmp / "none"), places.out, mounts_text())
    table = mounts_text((str(local), "tmpfs"))
    with pytest.raises(scratch.ScratchError, match="is memory"):
        scratch.choose_scratch(12 * GB, str(local), places.out, table, allowance=2 * GB)


def test_the_output_file_system_must_hold_the_file_and_its_copy(places):
    places.free.set(places.out, 20 * GB, device=1)
    places.free.set(places.tmp, 50 * GB, device=2)
    assert scratch.choose_scratch(12 * GB, None, places.out, mounts_text()) == places.tmp
    # the scratch on the output's own file system: the copy needs room beside the scratch file
    places.free.set(places.tmp, 20 * GB, device=1)
    with pytest.raises(scratch.ScratchError, match="and its copy from the scratch space"):
        scratch.choose_scratch(12 * GB, None, places.out, mounts_text())
    places.free.set(places.out, 10 * GB, device=1)
    with pytest.raises(scratch.ScratchError, match=r"output folder .* cannot hold the 12\.00 GB"):
        scratch.choose_scratch(12 * GB, None, places.out, mounts_text())


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 512 MiB tmpfs (needs root and mount; skipped where they are not available)."""
    point = tmp_path / "tmpfs"
    point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(point)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def test_a_real_small_tmpfs(small_tmpfs, tmp_path, monkeypatch, caplog):
    out = tmp_path / "results"
    out.mkdir()
    monkeypatch.setenv("TMPDIR", str(small_tmpfs))
    fs = scratch.filesystem(small_tmpfs)
    assert fs.in_memory and fs.fstype == "tmpfs" and fs.free == 512 << 20
    assert scratch.scratch_in_memory(None)
    # what a job with no memory limit of its own may write there, and what it may not
    chosen = scratch.choose_scratch(64 << 20, None, out, allowance=None)
    assert chosen == small_tmpfs
    writer = ActivationWriter(
        out / "a.safetensors", {"x": ((1024, 8192), np.float32)}, scratch=chosen
    )
    assert [p.name for p in small_tmpfs.iterdir()] == [f"genies-{os.getpid()}-a.safetensors"]
    writer.write("x", slice(0, 2), np.ones((2, 8192), np.float32))
    writer.close()
    assert (
        list(small_tmpfs.iterdir()) == []
        and load_activations(out / "a.safetensors")["x"][1, 0] == 1
    )
    assert scratch.choose_scratch(400 << 20, None, out, allowance=None) is None
    assert "cannot hold the 0.42 GB file" in caplog.text
    with pytest.raises(scratch.ScratchError, match="tmpfs at"):
        scratch.choose_scratch(400 << 20, str(small_tmpfs), out, allowance=None)


# ------------------------------------------------------------------ the forward job


@pytest.fixture(scope="module")
def forward_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("forward-scratch")
    data = make_genies_folder(root / "genies")
    materialise(data, "tgt_b", "test", root / "tgt_b.test.parquet")
    prepare_model({"source": "tiny", "seed": 0}, root / "tiny")
    return root


WORK = {"test": {"plain": {"heads": "all"}, "yesno": {"resid": [-1]}}}


def test_the_planned_file_size_is_the_written_one(forward_inputs, tmp_path, monkeypatch):
    """The figure the room is checked against (and a tmpfs scratch adds to mem_mb) is the
    size of the tensors the job writes."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    files = {"test": forward_inputs / "tgt_b.test.parquet"}
    planned = activation_file_bytes(WORK, files, {}, forward_inputs / "tiny")
    # 6 examples x 3 responses: heads 18 x 2 layers x 4 heads x 16; yes/no 36 x 1 layer x 64
    assert planned == 2 * (18 * 2 * 4 * 16 + 36 * 64)
    out = tmp_path / "out"
    run_forward(data_files=files, model_dir=forward_inputs / "tiny",
                scores_path=out / "s.parquet", activations_path=out / "a.safetensors",
                model_name="tiny", dataset="tgt_b", work=WORK,
                scoring={"device": "cpu", "dtype": "float32"}, job={"threads": 1})  # fmt: skip
    header = read_safetensors_header(out / "a.safetensors")
    data_bytes = (out / "a.safetensors").stat().st_size - header.data_start
    assert data_bytes == planned
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the scratch file is gone
    with pytest.raises(FileNotFoundError):  # not built yet: Snakemake's <TBD>
        activation_file_bytes(WORK, {"test": tmp_path / "missing.parquet"}, {}, out)


def test_a_forward_job_without_room_fails_before_loading_its_model(
    forward_inputs, tmp_path, free_space, monkeypatch
):
    monkeypatch.setattr(forward_job, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    local = tmp_path / "local"
    local.mkdir()
    free_space.set(local, 1000)
    out = tmp_path / "out"
    with pytest.raises(scratch.ScratchError, match=r"scratch_dir .*local.* cannot hold"):
        run_forward(data_files={"test": forward_inputs / "tgt_b.test.parquet"},
                    model_dir=forward_inputs / "tiny", scores_path=out / "s.parquet",
                    activations_path=out / "a.safetensors", model_name="tiny",
                    dataset="tgt_b", work=WORK, job={"scratch_dir": str(local)})  # fmt: skip
    assert not out.exists() or not list(out.iterdir())
