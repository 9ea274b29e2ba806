"""Keep XLA:CPU's per-step temporaries resident: glibc malloc settings made before JAX starts.

Why: every execution of a compiled step mallocs its temporaries as one block (~0.45 GiB for
benchmarks/train_step.py's bf16 LoRA step) and frees it at the end. glibc serves a block that big
with a fresh mmap and returns it with munmap, so each step page-faults the whole block back in:
120k faults and ~0.17 s of kernel time per ~0.5 s step there, ~9% of the step's wall time. With
one arena, no mmap for large blocks and no trimming, freed blocks stay in the heap and the next
step reuses them (0 faults).

The heap is also made to use transparent huge pages where the kernel leaves that to madvise
(`/sys/kernel/mm/transparent_hugepage/enabled` = madvise, the common default): glibc pads each
heap growth by `HUGE_PAGE_HEAP` bytes of address space, the heap is grown once now by twice that,
and the range is advised MADV_HUGEPAGE, so the step's temporaries land on 2 MiB pages when first
touched. The ~0.5 GiB a step streams through is ~120k pages of 4 KiB; on 2 MiB pages the bf16
LoRA step ran 3-5% faster (350-366 -> 335-346 ms in alternating processes; glibc's own
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` measured the same, but can only be set before the process
starts). Growth past the padded range gets ordinary pages, as before.

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
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_MADV_HUGEPAGE = 14
_DEFAULT_TOP_PAD = 128 << 10  # glibc's M_TOP_PAD default
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
HUGE_PAGE_HEAP = 1 << 30  # address space only (mallopt takes an int): backed when touched
# Accelerator plugins: with one installed (and JAX_PLATFORMS unset) JAX will not run on CPU.
_ACCELERATOR_DISTS = (
  "jax-cuda12-plugin",
  "jax-cuda13-plugin",
  "jax-rocm60-plugin",
  "jax-rocm7-plugin",
  "libtpu",
  "libtpu-nightly",
)
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
  kept = all(
    libc.mallopt(p, v) == 1
    for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
  )
  if kept:
    advise_huge_pages(libc)
  return kept


def thp_mode() -> str:
  """The kernel's transparent-huge-page mode (always | madvise | never), or "" if unknown."""
  try:
    with open(_THP_MODE) as f:
      text = f.read()
  except OSError:
    return ""
  start, end = text.find("["), text.find("]")
  return text[start + 1 : end] if 0 <= start < end else ""


def advise_huge_pages(libc) -> bool:
  """Grow the heap once by 2 x HUGE_PAGE_HEAP (a block that size plus the pad) and advise that
  range MADV_HUGEPAGE.

  Needs the settings above (large blocks from the heap, never trimmed). True when advised;
  False where the kernel decides without advice (always / never) or refused."""
  if thp_mode() != "madvise":
    return False
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
  libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
  if libc.mallopt(_M_TOP_PAD, HUGE_PAGE_HEAP) != 1:
    return False
  # The block and the pad come from one brk growth; freed, they stay as the heap's free top.
  block = libc.malloc(HUGE_PAGE_HEAP)
  if not block:  # no address space for it (strict overcommit): back to glibc's default pad
    libc.mallopt(_M_TOP_PAD, _DEFAULT_TOP_PAD)
    return False
  libc.free(block)
  start = block & ~(os.sysconf("SC_PAGE_SIZE") - 1)
  return libc.madvise(start, libc.sbrk(0) - start, _MADV_HUGEPAGE) == 0


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
