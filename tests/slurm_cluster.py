"""A throw-away single-node SLURM cluster on 127.0.0.1 with fake GPUs (used by test_slurm.py).

Debian's slurmctld/slurmd/munge packages, configured inside one temporary directory: the munge
key, socket and seed, slurm.conf and gres.conf, the state and spool directories, the daemon
logs. The daemons run in the foreground as children of this process and are stopped by their
own PIDs.

One file outside the temporary directory is needed: /etc/slurm/slurm.conf, as a link to ours.
The client commands and daemons find the configuration through SLURM_CONF, but the executor
plugin's job step removes every SLURM_* variable before it calls `srun` inside the job, so
`srun` only finds the compiled-in default path. The link is created only where no slurm.conf
exists (a machine with a real SLURM configuration is left alone) and removed by `stop()`.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
NODE = "genies-node"
FAKE_GPUS = ("/dev/null", "/dev/zero")  # gres.conf files of the two fake GPUs
JOB_FIELDS = (
    "JobId",
    "JobState",
    "Partition",
    "TresPerJob",
    "MinMemoryNode",
    "TimeLimit",
    "Comment",
)


def _stale_link() -> bool:
    """True when DEFAULT_CONF is a link into one of our temporary clusters that is gone: a
    test run killed before `stop()` leaves it behind, and nothing else can use it."""
    if not DEFAULT_CONF.is_symlink():
        return False
    target = Path(os.readlink(DEFAULT_CONF))
    ours = target.parent.name.startswith("genies-slurm-") and target.name == "slurm.conf"
    return ours and not target.parent.exists()


def remove_stale_link() -> None:
    if _stale_link():
        DEFAULT_CONF.unlink()


def unavailable_reason() -> str | None:
    """None when a cluster can be installed and started here, else why not."""
    if os.geteuid() != 0:
        return "needs root (installs Debian packages and runs slurmd as root)"
    remove_stale_link()
    if not all(shutil.which(c) for c in COMMANDS) and not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is not available"
    if DEFAULT_CONF.exists() or DEFAULT_CONF.is_symlink():
        return f"{DEFAULT_CONF} exists: this machine has a SLURM configuration of its own"
    return None


def install() -> None:
    """Install Debian's SLURM and munge unless they are already there (~15 s)."""
    if all(shutil.which(c) for c in COMMANDS):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr}")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SlurmCluster:
    """`start()` brings up munged, slurmctld and slurmd; `stop()` ends them and removes all.

    Two partitions share the node, `cpu` (the default) and `gpu`, so a test can see which one
    each job was sent to. The node has the machine's real CPU count and memory and two GPUs of
    type `fake`.
    """

    def __init__(self, partitions=("cpu", "gpu")):
        self.partitions = partitions
        self.root = Path(tempfile.mkdtemp(prefix="genies-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._made_etc_dir = False

    def _write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(mode=0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        ctld_port, slurmd_port = _free_ports(2)
        host = socket.gethostname()
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        partitions = "".join(
            f"PartitionName={name} Nodes={NODE} Default={'YES' if i == 0 else 'NO'} "
            "MaxTime=INFINITE State=UP\n"
            for i, name in enumerate(self.partitions)
        )
        self.conf.write_text(
            f"""\
ClusterName=genies-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.root}/munge/munge.socket
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to squeue for 10 minutes (the plugin's status queries need that
# without accounting).
MinJobAge=600
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} \
RealMemory={memory_mb} Gres=gpu:fake:{len(FAKE_GPUS)} State=UNKNOWN
{partitions}"""
        )
        (self.root / "gres.conf").write_text(
            "".join(f"NodeName={NODE} Name=gpu Type=fake File={dev}\n" for dev in FAKE_GPUS)
        )

    def _link_default_conf(self) -> None:
        if DEFAULT_CONF.exists() or DEFAULT_CONF.is_symlink():
            raise RuntimeError(f"{DEFAULT_CONF} exists; refusing to replace it")
        if not DEFAULT_CONF.parent.exists():
            DEFAULT_CONF.parent.mkdir(parents=True)
            self._made_etc_dir = True
        DEFAULT_CONF.symlink_to(self.conf)

    def _unlink_default_conf(self) -> None:
        if DEFAULT_CONF.is_symlink() and os.readlink(DEFAULT_CONF) == str(self.conf):
            DEFAULT_CONF.unlink()
        if self._made_etc_dir:
            DEFAULT_CONF.parent.rmdir()

    def _spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.root / "log" / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def start(self, timeout: float = 60) -> None:
        self._write_config()
        self._link_default_conf()
        munge = self.root / "munge"
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={munge}/munge.key",
                f"--socket={munge}/munge.socket",
                f"--pid-file={munge}/munged.pid",
                f"--seed-file={munge}/munged.seed",
                f"--log-file={self.root}/log/munged.file.log",
            ],
        )
        self._wait_for(lambda: (munge / "munge.socket").exists(), timeout, "the munge socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        ping = lambda: self.run("scontrol", "ping", check=False).returncode == 0  # noqa: E731
        self._wait_for(ping, timeout, "slurmctld")
        self._spawn("slurmd", ["slurmd", "-D", "-N", NODE])
        self._wait_for(self._node_idle, timeout, "the node to become idle")

    def _node_idle(self) -> bool:
        states = self.run("sinfo", "--noheader", "-N", "-o", "%t", check=False).stdout.split()
        return bool(states) and all(s == "idle" for s in states)

    def _wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.logs()}")
            if condition():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {what}:\n{self.logs()}")

    def run(self, *cmd: str, check=True) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check)

    def jobs(self) -> dict[str, dict]:
        """Job id -> fields of every job slurmctld remembers (finished ones for MinJobAge)."""
        out = self.run("scontrol", "-o", "show", "job", check=False).stdout
        jobs = {}
        for line in out.splitlines():
            fields = {k: v for k, v in re.findall(r"(\w+)=(\S*)", line) if k in JOB_FIELDS}
            if "JobId" in fields:
                jobs[fields["JobId"]] = fields
        return jobs

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}"
            for path in sorted((self.root / "log").glob("*.log"))
        )

    def stop(self) -> None:
        """Cancel remaining jobs, stop the daemons by PID (reverse start order), delete all."""
        try:
            ctld = self.processes.get("slurmctld")
            if ctld is not None and ctld.poll() is None:
                self.run("scancel", f"--user={getpass.getuser()}", check=False)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and any(
                    j["JobState"] in ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING")
                    for j in self.jobs().values()
                ):
                    time.sleep(0.5)
            for name in reversed(list(self.processes)):
                proc = self.processes[name]
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=5)
        finally:
            self._unlink_default_conf()
            shutil.rmtree(self.root, ignore_errors=True)
