"""Starting JAX's distributed runtime for multi-process (multi-host) runs.

One polyjax run may span several processes, e.g. the hosts of a TPU pod slice or
the nodes of a SLURM GPU job. Each process runs the same command; the device
mesh spans the devices of all of them (`polyjax.placement.make_mesh`). This module
decides whether to call `jax.distributed.initialize` and calls it, which must
happen before any other JAX call.

`decide` is a pure function of the flags and the environment, so that a plain
laptop run never tries to reach a coordinator or a metadata server: without
explicit flags, the runtime starts only where the environment says this process
is one of several (an srun step of several tasks, an Open MPI job of several
ranks) or on a Cloud TPU VM, where JAX's own cluster detection fills in the rest.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import Mapping

import jax

MODES = ("auto", "on", "off")


class DistributedError(ValueError):
  """Launch flags that cannot start a distributed run; the message names the flag."""


def _int_env(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ.get(name, "1"))
  except ValueError:
    return 1


def on_cloud_tpu_vm() -> bool:
  """Whether this machine is a Cloud TPU VM (libtpu installed and TPU chips present).

  Only local files are looked at; no network.
  """
  if importlib.util.find_spec("libtpu") is None:
    return False
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def decide(*, mode: str, coordinator_address: str | None, num_processes: int | None,
           process_id: int | None, environ: Mapping[str, str],
           tpu_vm: bool) -> str | None:
  """Why the distributed runtime should start, or None for a single-process run.

  Args:
    mode: 'auto' (flags, or a multi-process cluster environment), 'on' (always; JAX
      detects what the flags leave out) or 'off' (never).
    coordinator_address, num_processes, process_id: the launch flags (None: unset).
    environ: the process environment.
    tpu_vm: whether this is a Cloud TPU VM (`on_cloud_tpu_vm()`).

  Raises:
    DistributedError: contradictory or out-of-range flags.
  """
  if mode not in MODES:
    raise DistributedError(f"--distributed={mode!r} is not known; valid: {', '.join(MODES)}")
  explicit = [name for name, value in (("coordinator_address", coordinator_address),
                                       ("num_processes", num_processes),
                                       ("process_id", process_id)) if value is not None]
  if mode == "off":
    if explicit:
      raise DistributedError(f"--{explicit[0]} is set but --distributed=off")
    return None
  if num_processes is not None and num_processes < 1:
    raise DistributedError(f"--num_processes must be >= 1, got {num_processes}")
  if process_id is not None and process_id < 0:
    raise DistributedError(f"--process_id must be >= 0, got {process_id}")
  if (num_processes is not None and process_id is not None
      and process_id >= num_processes):
    raise DistributedError(f"--process_id must be < --num_processes ({num_processes}), "
                           f"got {process_id}")
  if coordinator_address is not None and ":" not in coordinator_address:
    raise DistributedError(f"--coordinator_address must be HOST:PORT, got {coordinator_address!r}")
  # SLURM_STEP_NODELIST exists only inside an srun step, so a batch script that
  # asked for several tasks but runs one Python process stays single-process.
  if "SLURM_STEP_NODELIST" in environ and _int_env(environ, "SLURM_NTASKS") > 1:
    cluster = "SLURM step with several tasks"
  elif _int_env(environ, "OMPI_COMM_WORLD_SIZE") > 1:
    cluster = "Open MPI job with several ranks"
  elif tpu_vm:
    cluster = "Cloud TPU VM"
  else:
    cluster = None
  if explicit:
    if cluster is None and len(explicit) < 3:
      missing = [f"--{n}" for n in ("coordinator_address", "num_processes", "process_id")
                 if n not in explicit]
      raise DistributedError(f"--{explicit[0]} needs {' and '.join(missing)} outside a "
                             "SLURM, Open MPI or Cloud TPU job")
    return "launch flags"
  if mode == "on":
    return "--distributed=on"
  return cluster


def initialize(*, mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               environ: Mapping[str, str] | None = None) -> str | None:
  """Starts the distributed runtime if `decide` says so; returns the reason or None.

  Must run before any other JAX call. On CPU, cross-process collectives use gloo.
  """
  environ = os.environ if environ is None else environ
  tpu_vm = mode == "auto" and on_cloud_tpu_vm()
  reason = decide(mode=mode, coordinator_address=coordinator_address,
                  num_processes=num_processes, process_id=process_id,
                  environ=environ, tpu_vm=tpu_vm)
  if reason is None:
    return None
  # Without this, CPU computations that span processes have no collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  except ValueError as e:  # JAX found no cluster to fill in the unset flags.
    detail = str(e).rstrip(".")
    raise DistributedError(f"cannot start the distributed runtime ({reason}): {detail}; pass "
                           "--coordinator_address, --num_processes and --process_id") from e
  return reason


def is_writer() -> bool:
  """Whether this process writes the run's files and talks to wandb (process 0)."""
  return jax.process_index() == 0
