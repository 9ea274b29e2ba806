"""Keep XLA:CPU's per-step temporaries resident: glibc malloc settings made before JAX starts.

Why: every execution of a compiled step mallocs its temporaries as one block (~0.45 GiB for
benchmarks/train_step.py's bf16 LoRA step) and frees it at the end. glibc serves a block that big
with a fresh mmap and returns it with munmap, so each step page-faults the whole block back in:
120k faults and ~0.17 s of kernel time per ~0.5 s step there, ~9% of the step's wall time. With
no mmap for large blocks and no trimming, a freed block stays in the heap and the next step
reuses it (0 faults), as long as the heap is the main arena's (see "Which arena" below).

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

Which arena holds the step's block. One of the PjRt client's threads allocates it, and glibc
gives each thread an arena of its own. A thread arena serves a block larger than its 64 MiB heap
limit with a fresh mmap, whatever M_MMAP_MAX says, and frees it with munmap. For SmolLM2-135M's
bf16 LoRA step (a 1.7 GB block) that is 425k page faults per step, and the step ran 4.07-4.35 s
against 3.66-3.93 s (one 4.27) with glibc capped at one arena (alternating processes). But one
arena costs the decode: XLA's two worker threads then share its lock for every small buffer
YNNPACK allocates, and the bf16 batch-1 decode ran at 39.6 / 40.9 tok/s against 48.9 / 49.3
without the cap (141k voluntary context switches against 28k).

glibc's `glibc.malloc.hugetlb=1` tunable (TUNABLE, glibc >= 2.35) has glibc advise its maps for
huge pages, so the fresh block lands on 2 MiB pages: 1.2k faults per step, and the step ran as
fast as with one arena (3.73-3.85 s against 3.66-3.93 s in the same rounds; peak RSS 3.1 against
2.9 GiB). So the arena is capped only where fresh maps would not get huge pages. glibc reads a
tunable only when a process starts: `keep_on_cpu(relaunch=True)`, which gemmax's scripts use,
re-executes the script once with it set (`relaunch_with_tunable`).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import sys

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
TUNABLE = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: madvise its mmaps and heap growth for THP


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
  settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)]
  if not maps_on_huge_pages():  # a thread arena's fresh map per step would fault 4 KiB pages
    settings.append((_M_ARENA_MAX, 1))
  kept = all(libc.mallopt(p, v) == 1 for p, v in settings)
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


def glibc_version() -> tuple[int, ...]:
  """(major, minor) of this process's glibc; () where it is not glibc."""
  if not on_glibc():
    return ()
  return tuple(int(x) for x in platform.libc_ver()[1].split(".")[:2] if x.isdigit())


def tunable_set() -> bool:
  """Whether this process started with TUNABLE in GLIBC_TUNABLES (glibc reads it only then)."""
  return TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


def with_tunable(tunables: str | None) -> str:
  """A GLIBC_TUNABLES value: `tunables` (may be empty or None) with TUNABLE appended."""
  return ":".join(filter(None, (tunables, TUNABLE)))


def maps_on_huge_pages() -> bool:
  """Whether glibc's fresh mmaps get transparent huge pages in this process: the kernel gives
  every anonymous map huge pages (mode always), or glibc advises them (TUNABLE set at start on a
  glibc that knows it, mode madvise)."""
  mode = thp_mode()
  return mode == "always" or (mode == "madvise" and tunable_set() and glibc_version() >= (2, 35))


def relaunch_with_tunable() -> None:
  """Re-execute this script (same interpreter, arguments and pid) with TUNABLE added to
  GLIBC_TUNABLES, where that would give glibc's mmaps huge pages and has not been done yet;
  otherwise return. Only for a script's start: everything the process did so far is redone."""
  if (
    thp_mode() != "madvise"  # always: every map is huge already; never: none can be
    or glibc_version() < (2, 35)
    or tunable_set()  # started with it (maps_on_huge_pages): never loop
    or _backends_started()
    or not getattr(sys, "orig_argv", None)
    or sys.argv[0] in ("", "-")  # an interactive session or a script read from stdin: not again
    or sys.flags.interactive
  ):
    return
  env = dict(os.environ)
  env["GLIBC_TUNABLES"] = with_tunable(env.get("GLIBC_TUNABLES"))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


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


def keep_on_cpu(*, relaunch: bool = False) -> bool:
  """`keep_host_memory()` when JAX will run on CPU and GEMMAX_KEEP_HOST_MEMORY is not "0";
  with `relaunch`, first `relaunch_with_tunable()` (for scripts, not notebooks or libraries)."""
  if os.environ.get(ENV_SWITCH, "1") == "0" or not runs_on_cpu():
    return False
  if relaunch:
    relaunch_with_tunable()
  return keep_host_memory()
