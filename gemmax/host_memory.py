"""Keep XLA:CPU's per-step temporaries resident: glibc malloc settings made before JAX starts.

Why: every execution of a compiled step mallocs its temporaries as one block (~0.45 GiB for
benchmarks/train_step.py's bf16 LoRA step) and frees it at the end. glibc serves a block that big
with a fresh mmap and returns it with munmap, so each step page-faults the whole block back in:
120k faults and ~0.17 s of kernel time per ~0.5 s step there, ~9% of the step's wall time. With
one arena, no mmap for large blocks and no trimming, freed blocks stay in the heap and the next
step reuses them (0 faults).

The settings only reach JAX's worker threads if they are made before those threads first
allocate, i.e. before the CPU client exists (the first array, jit call or `jax.devices()`).
They are process-wide: freed host memory is kept for reuse instead of returned to the OS, which
is what a CPU training process wants and what an accelerator host holding a large host-side
checkpoint may not; hence `keep_on_cpu`, which applies them only when JAX will run on CPU.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# Accelerator plugins: with one installed (and JAX_PLATFORMS unset) JAX will not run on CPU.
_ACCELERATOR_DISTS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-rocm60-plugin",
                      "jax-rocm7-plugin", "libtpu", "libtpu-nightly")
ENV_SWITCH = "GEMMAX_KEEP_HOST_MEMORY"  # "0" turns keep_on_cpu off


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # jax.distributed uses the same check
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # a JAX without it: assume started, change nothing
    return True


def on_glibc() -> bool:
  """Whether this process's C library is glibc (the only one whose mallopt this module sets)."""
  return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_host_memory() -> bool:
  """Apply the settings; True when they took effect (glibc, before JAX's backends started)."""
  if not on_glibc() or _backends_started():
    return False
  libc = ctypes.CDLL("libc.so.6")
  # -1 is read by glibc as SIZE_MAX (its setter takes size_t): never trim the heap's top.
  return all(libc.mallopt(p, v) == 1
             for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))


def runs_on_cpu() -> bool:
  """Whether JAX will pick the CPU, judged without starting it: JAX_PLATFORMS, else whether an
  accelerator plugin is installed."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  for dist in _ACCELERATOR_DISTS:
    try:
      importlib.metadata.distribution(dist)
      return False
    except importlib.metadata.PackageNotFoundError:
      pass
  return True


def keep_on_cpu() -> bool:
  """`keep_host_memory()` when JAX will run on CPU and GEMMAX_KEEP_HOST_MEMORY is not "0"."""
  if os.environ.get(ENV_SWITCH, "1") == "0" or not runs_on_cpu():
    return False
  return keep_host_memory()
