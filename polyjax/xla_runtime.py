"""XLA runtime settings a config or flag chooses: determinism, matmul precision,
per-program compiler options and the persistent compilation cache."""

from __future__ import annotations

import os
from typing import Callable, MutableMapping

import jax

from polyjax.errors import ConfigError
from polyjax import checkpointing

# XLA:CPU hands matmuls to YNNPACK/XNNPACK, whose fixed cost per call outweighs a
# tiny model's whole matmul: the Figure 1 linear model's full-batch step runs faster
# with XLA's own emitters. Models whose step does at least this many multiply-adds
# (parameters x batch size) gain from them instead (the digits MLP at batch 64 runs
# slower without them). Figures: docs/BENCHMARKS.md, "Figure 1 loop and tiny models".
SMALL_STEP_MACS = 100_000


def train_compiler_options(*, num_params: int, batch_size: int) -> dict[str, str] | None:
  """XLA options for the training program: none, except for tiny models on CPU."""
  if jax.default_backend() != "cpu" or num_params * batch_size >= SMALL_STEP_MACS:
    return None
  return {"xla_cpu_experimental_ynn_fusion_type": "",
          "xla_cpu_experimental_xnn_fusion_type": ""}


DETERMINISTIC_GPU_FLAG = "--xla_gpu_deterministic_ops"


def set_deterministic(on: bool, environ: MutableMapping[str, str] = os.environ) -> None:
  """With `on`, asks XLA:GPU for deterministic programs (`--xla_gpu_deterministic_ops`
  in XLA_FLAGS: no autotuning, whose pick of convolution algorithm varies between
  processes, and deterministic reductions and scatters); XLA reads XLA_FLAGS when
  its backend starts, so this runs before JAX's first computation. An XLA_FLAGS that
  already names the flag is left as the user set it. CPU programs are deterministic
  either way."""
  flags = environ.get("XLA_FLAGS", "")
  if on and DETERMINISTIC_GPU_FLAG not in flags:
    environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_GPU_FLAG}=true".strip()


# config.matmul_precision -> jax_default_matmul_precision ('default': the platform's
# choice, e.g. TF32 products and convolutions on NVIDIA GPUs from Ampere on).
MATMUL_PRECISIONS = {"default": None, "bfloat16": "bfloat16",
                     "tensorfloat32": "tensorfloat32", "float32": "float32"}


class WithMatmulPrecision:
  """`fn` (a jitted program, or a function that calls some) traced under
  `config.matmul_precision`: every product and convolution whose precision is not
  set explicitly, the model's, the loss's and the custom CPU convolution forms'
  alike. JAX keys its compiled programs by this setting, so the wrapped program
  does not change what other callers of `fn` get."""

  def __init__(self, fn: Callable, matmul_precision: str):
    if matmul_precision not in MATMUL_PRECISIONS:
      raise ConfigError(f"config.matmul_precision={matmul_precision!r} is not known; "
                        f"valid: {', '.join(MATMUL_PRECISIONS)}")
    self.fn, self.precision = fn, MATMUL_PRECISIONS[matmul_precision]

  def __call__(self, *args, **kwargs):
    with jax.default_matmul_precision(self.precision):
      return self.fn(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with jax.default_matmul_precision(self.precision):
      return self.fn.lower(*args, **kwargs)


def use_compilation_cache(directory: str) -> None:
  """Keeps every program XLA compiles from here on (training and evaluation
  programs, and the model's initialisation) in `directory`,
  so that a later run of the same shapes loads it instead of compiling: JAX's
  persistent cache, keyed by the program, the compile options and the JAX/XLA
  versions, with no minimum compile time, since a small run's programs each compile
  in well under JAX's default threshold of a second.

  Raises checkpointing.CheckpointDirError (naming --compilation_cache_dir) if the
  directory cannot be written.
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  checkpointing.check_writable(directory, "--compilation_cache_dir")
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

