"""A one-node SLURM cluster on this machine, for the launcher's tests.

Debian's slurm-wlm and munge (`.ci/run` installs them): munged, slurmctld and
slurmd on 127.0.0.1 with ports of their own, proctrack/linuxproc and no cgroups,
no accounting (the launcher needs only sbatch, squeue and scancel). Everything
lives in one directory, so several clusters (one per test process) can run at once.
`start` raises ClusterError with the reason when one cannot be started.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import socket
import subprocess
import time

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")


class ClusterError(RuntimeError):
  pass


@dataclasses.dataclass
class Cluster:
  root: pathlib.Path
  env: dict[str, str]  # os.environ plus SLURM_CONF: for the commands that use the cluster.

  def run(self, *argv: str) -> str:
    return subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                          check=True, timeout=60).stdout

  def stop(self) -> None:
    subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], env=self.env,
                   capture_output=True, timeout=60)
    subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True, timeout=60)
    for name in ("slurmctld", "slurmd", "munged"):
      _kill(self.root / f"{name}.pid")


def _kill(pid_file: pathlib.Path) -> None:
  try:
    pid = int(pid_file.read_text().split()[0])
    os.kill(pid, 15)
  except (OSError, ValueError, IndexError):
    pass


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _sbin(name: str) -> str:
  found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
  if found is None:
    raise ClusterError(f"{name} is not installed (apt-get install slurm-wlm munge)")
  return found


def _config(root: pathlib.Path, host: str, cpus: int) -> str:
  ctld, slurmd = _free_port(), _free_port()
  return f"""ClusterName=polyjaxtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=10
MinJobAge=60
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def start(root: pathlib.Path, timeout: float = 60.0) -> Cluster:
  """Starts munged, slurmctld and slurmd with their files under `root`."""
  if os.geteuid() != 0:
    raise ClusterError("the test cluster's slurmd must run as root (it starts jobs)")
  for name in CLIENTS:
    if shutil.which(name) is None:
      raise ClusterError(f"{name} is not installed (apt-get install slurm-wlm)")
  munged, slurmctld, slurmd = map(_sbin, DAEMONS)
  root.mkdir(parents=True, exist_ok=True)
  for sub in ("munge", "state", "spool"):
    (root / sub).mkdir(mode=0o700, exist_ok=True)
  os.chmod(root / "munge", 0o755)  # Clients reach the socket through it.
  key = root / "munge" / "key"
  key.write_bytes(os.urandom(1024))
  key.chmod(0o400)
  host = socket.gethostname().split(".")[0]
  conf = root / "slurm.conf"
  conf.write_text(_config(root, host, os.cpu_count() or 1))
  env = {**os.environ, "SLURM_CONF": str(conf)}
  commands = [
      [munged, "--force", f"--socket={root}/munge/socket", f"--key-file={key}",
       f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid",
       f"--seed-file={root}/munge/seed"],
      [slurmctld, "-f", str(conf), "-i"],
      [slurmd, "-f", str(conf), "-N", host]]
  cluster = Cluster(root, env)
  for argv in commands:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
      cluster.stop()
      raise ClusterError(f"{pathlib.Path(argv[0]).name} did not start: "
                         f"{(done.stderr or done.stdout).strip()[-500:]}")
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    state = subprocess.run(["sinfo", "--noheader", "--format=%T"], env=env,
                           capture_output=True, text=True, timeout=60).stdout.strip()
    if state == "idle":
      return cluster
    time.sleep(0.25)
  logs = "; ".join(f"{p.name}: {p.read_text().strip().splitlines()[-1:]}"
                   for p in sorted(root.glob("*.log")) if p.stat().st_size)
  cluster.stop()
  raise ClusterError(f"the node did not become idle within {timeout:.0f} s ({logs})")
