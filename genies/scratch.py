"""Scratch space for large files written piecemeal, and whether it has room for them.

A forward job fills its activation file (7-20 GB for a 7B-30B model at the paper preset) row by
row through a memory map (`genies.forward.activations.ActivationWriter`), so it writes it in
node-local scratch space and copies it next to its output when complete. Where
(`choose_scratch`, config ``scratch_dir``):

- ``scratch_dir: null`` (default): ``$TMPDIR`` when it is set, exists and has room; otherwise
  the file is written beside its output (a warning in the job's log says why).
- ``scratch_dir: PATH`` (environment variables expanded in the job, e.g. ``/local/$USER``):
  there, or the job fails before computing anything.

Room: the file system's free space (`os.statvfs`) must hold the file with `MARGIN`. A tmpfs or
ramfs (read from /proc/mounts) is memory: on a cluster its pages count against the job's memory
limit, so it must also fit what that limit leaves (the job's memory cgroup, v1 or v2: its limit
less what it holds that cannot be reclaimed). The forward jobs' memory request (``mem_mb``)
counts their activation file when the scratch is a tmpfs as seen where Snakemake runs
(`scratch_in_memory`, `genies.pipeline.cluster`). The output's own file system must hold the
file too, twice when the scratch is on it (the copy is made before the scratch file goes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from genies.errors import GeniesError

log = logging.getLogger(__name__)

MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")
# Room kept beyond the file: 2% and 256 MiB (metadata, other writers, the kernel's reserve).
MARGIN = (1.02, 256 << 20)
# cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages).
NO_LIMIT = 1 << 60


class ScratchError(GeniesError, OSError):
    """The scratch space or the output's file system cannot hold a file about to be written."""


@dataclass(frozen=True)
class Filesystem:
    """The file system holding a path: its mount point, type and free bytes."""

    path: Path
    mount_point: str
    fstype: str
    free: int
    device: int

    @property
    def in_memory(self) -> bool:
        return self.fstype in MEMORY_FILESYSTEMS

    def describe(self) -> str:
        return f"{self.path} ({self.fstype} at {self.mount_point}, {self.free / 1e9:.1f} GB free)"


def _unescape(field: str) -> str:
    """A /proc/mounts field: spaces, tabs, newlines and backslashes are octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_of(path, mounts: str | None = None) -> tuple[str, str]:
    """(mount point, file system type) of the mount holding `path` in the mount table
    `mounts` (/proc/mounts' text; read when None). The last mount of a point wins."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return "/", "unknown"
    target = os.path.realpath(path)
    best = ("/", "unknown")
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point, fstype = _unescape(fields[1]), fields[2]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fstype)
    return best


def filesystem(path, mounts: str | None = None) -> Filesystem:
    """The file system of existing directory `path`."""
    path = Path(path)
    stat = os.statvfs(path)
    point, fstype = mount_of(path, mounts)
    return Filesystem(path, point, fstype, stat.f_bavail * stat.f_frsize, os.stat(path).st_dev)


def memory_allowance(cgroup_root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup") -> int | None:
    """Bytes this process's memory cgroup may still charge: the tightest limit on its path less
    what that cgroup holds that cannot be reclaimed (all but the page cache of ordinary files).
    None when no limit is set or the cgroup cannot be read."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    root = Path(cgroup_root)
    best = None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2
            base, files = root, ("memory.max", "memory.current", "file", "shmem")
        elif "memory" in controllers.split(","):  # v1
            base = root / "memory"
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_cache",
                     "total_shmem")  # fmt: skip
        else:
            continue
        folder = base / path.lstrip("/")
        while True:  # the limit of any ancestor applies as well
            room = _cgroup_room(folder, *files)
            if room is not None and (best is None or room < best):
                best = room
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return best


def _cgroup_room(folder: Path, limit_file, usage_file, cache_key, shmem_key) -> int | None:
    try:
        limit = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text())
    except (OSError, ValueError):
        return None
    if limit == "max" or int(limit) >= NO_LIMIT:
        return None
    stat = {}
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            stat[key] = int(value)
    except (OSError, ValueError):
        pass
    reclaimable = max(stat.get(cache_key, 0) - stat.get(shmem_key, 0), 0)
    return max(int(limit) - usage + reclaimable, 0)


def needed(size: int) -> int:
    """Bytes a file of `size` needs on a file system, with `MARGIN`."""
    return int(size * MARGIN[0]) + MARGIN[1]


def room_problem(fs: Filesystem, size: int, allowance: int | None) -> str | None:
    """Why `fs` cannot take a file of `size` bytes (None: it can). `allowance`: what the job's
    memory limit leaves (`memory_allowance`), which a file in memory must fit too."""
    need = needed(size)
    if fs.free < need:
        return f"{fs.describe()} cannot hold the {size / 1e9:.2f} GB file"
    if fs.in_memory and allowance is not None and allowance < need:
        return (
            f"{fs.describe()} is memory, and the job's memory limit leaves {allowance / 1e9:.1f}"
            f" GB, less than the {size / 1e9:.2f} GB file"
        )
    return None


def expand(setting: str) -> Path:
    """A ``scratch_dir`` setting with ``$VARIABLES`` and ``~`` expanded here."""
    return Path(os.path.expanduser(os.path.expandvars(setting)))


def candidate(setting: str | None, environ=None) -> Path | None:
    """Where a file would go before its room is checked: the setting, else $TMPDIR."""
    if setting:
        return expand(setting)
    value = (os.environ if environ is None else environ).get("TMPDIR")
    return Path(value) if value else None


def choose_scratch(
    size: int, setting: str | None, output_dir, mounts: str | None = None, allowance="read"
) -> Path | None:
    """The folder to write a `size`-byte file for `output_dir` in: the scratch (`candidate`)
    when it has room, else None (beside the output; not for an explicit `setting`, which
    raises `ScratchError`). Raises `ScratchError` too when `output_dir`'s file system cannot
    hold the file. `mounts` and `allowance` replace /proc/mounts and `memory_allowance`."""
    if allowance == "read":
        allowance = memory_allowance()
    output = filesystem(output_dir, mounts)
    chosen = candidate(setting)
    if chosen is not None and not chosen.is_dir():
        if setting:
            raise ScratchError(
                f"scratch_dir {setting!r} ({chosen}) is not a directory on this node; create "
                f"it, or set scratch_dir to a directory that exists (null: $TMPDIR)"
            )
        chosen = None  # $TMPDIR names nothing here
    if chosen is not None:
        scratch = filesystem(chosen, mounts)
        problem = room_problem(scratch, size, allowance)
        if problem is None:
            _check_output(output, size, copies=2 if scratch.device == output.device else 1)
            return chosen
        if setting:
            raise ScratchError(
                f"scratch_dir {setting!r}: {problem}. Set scratch_dir to a folder with room "
                f"(a node-local disk), or to null to write beside the output when $TMPDIR "
                f"lacks room"
            )
        log.warning("$TMPDIR %s; writing the file beside its output in %s", problem, output_dir)
    _check_output(output, size)
    return None


def _check_output(output: Filesystem, size: int, copies: int = 1) -> None:
    if output.free < copies * needed(size):
        raise ScratchError(
            f"the output folder {output.describe()} cannot hold the {size / 1e9:.2f} GB file "
            + ("and its copy from the scratch space " if copies > 1 else "")
            + "this job writes; free space there, or move the workflow's results"
        )


def scratch_in_memory(setting: str | None, mounts: str | None = None) -> bool:
    """Whether files written with `setting` go to memory (a tmpfs), judged here: where
    Snakemake builds the jobs (with $TMPDIR and the mount table of this host)."""
    chosen = candidate(setting)
    if chosen is None or "$" in str(chosen):  # an unset variable: unknown here
        return False
    return mount_of(chosen, mounts)[1] in MEMORY_FILESYSTEMS
