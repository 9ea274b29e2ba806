"""gemmax.host_memory: XLA:CPU's per-step temporaries stop page-faulting once glibc keeps them."""

import os
import subprocess
import sys
import textwrap
import types

import jax
import pytest

from gemmax import host_memory

glibc = pytest.mark.skipif(
  not host_memory.on_glibc(),
  reason="keep_host_memory sets glibc's mallopt; on other C libraries "
  "it is a no-op, so there is nothing to measure",
)

# A jitted step whose 48 MiB temporary is above glibc's largest mmap threshold (32 MiB): prints
# the page faults of runs 6-8. The first few runs may still grow the heap (small allocations
# settle into the freed space); the pause lets the runtime free a run's temporary before the
# next run allocates one, as a training loop's host work between steps does.
_PROBE = textwrap.dedent("""
    import resource, sys, time
    from gemmax import host_memory
    kept = host_memory.keep_host_memory() if sys.argv[1] == "keep" else False
    import jax, jax.numpy as jnp
    x = jnp.ones((3500, 3500), jnp.float32)
    f = jax.jit(lambda x: (jnp.sin(x) @ x[0]).sum())  # sin(x) materialised for the dot
    faults = 0
    for i in range(8):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      faults += (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) if i >= 5 else 0
      time.sleep(0.05)
    print(kept, faults)
""")


def _probe(script, mode, tunables=""):
  """Run a probe script in a fresh process (mode "keep" or "plain") that starts with
  GLIBC_TUNABLES=tunables: (kept, *its integers)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", GLIBC_TUNABLES=tunables)
  out = subprocess.run(
    [sys.executable, "-c", script, mode],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=True,
  ).stdout.split()
  return (out[0] == "True", *map(int, out[1:]))


@glibc
def test_kept_memory_is_reused_across_steps():
  kept, faults = _probe(_PROBE, "keep")
  _, baseline = _probe(_PROBE, "plain")
  assert kept
  pages = 3500 * 3500 * 4 // 4096
  assert baseline > 2 * pages, baseline  # glibc maps and unmaps the temporary every run ...
  assert faults < pages // 10, faults  # ... and with the settings later runs reuse it


# The same step under glibc's huge-page tunable: prints the page faults of runs 6-8 and the
# number of malloc arenas (threads keep arenas of their own: no cap, no lock contention).
_TUNED = _PROBE.replace(
  "print(kept, faults)",
  """import ctypes, tempfile
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
with tempfile.NamedTemporaryFile() as f:
  fp = libc.fopen(f.name.encode(), b"w")
  libc.malloc_info(0, fp)
  libc.fclose(fp)
  arenas = open(f.name).read().count("<heap nr=")
print(kept, faults, arenas)""",
)
needs_tunable = pytest.mark.skipif(
  host_memory.thp_mode() != "madvise" or host_memory.glibc_version() < (2, 35),
  reason="relaunch_with_tunable acts only on glibc >= 2.35 (older ones ignore the tunable) with "
  "the kernel's huge pages in madvise mode (always: every map is huge already; never: none can "
  "be); here it returns by design and one arena stays, which test 1 checks",
)


@glibc
@needs_tunable
def test_with_the_tunable_threads_keep_their_arenas_and_maps_are_huge():
  kept, faults, arenas = _probe(_TUNED, "keep", host_memory.TUNABLE)
  assert kept
  assert arenas > 1, arenas  # not capped: worker threads allocate without sharing one lock
  # the temporary is mapped afresh each run, on 2 MiB pages: ~24 faults a run, not ~3000
  assert faults < 3500 * 3500 * 4 // 4096 // 10, faults
  _, _, capped = _probe(_TUNED, "keep")  # no tunable: one arena, as test 1 relies on
  assert capped == 1, capped


_RELAUNCH = textwrap.dedent("""
    import os, sys
    from gemmax import host_memory
    with open(sys.argv[1], "a") as f:
      f.write(os.environ.get("GLIBC_TUNABLES", "-") + "\\n")
    print(host_memory.keep_on_cpu(relaunch=True), host_memory.maps_on_huge_pages())
""")


@glibc
@needs_tunable
@pytest.mark.parametrize(
  "start, runs",
  [
    ("", ["-", host_memory.TUNABLE]),
    (
      "glibc.malloc.tcache_count=9",
      ["glibc.malloc.tcache_count=9", "glibc.malloc.tcache_count=9:" + host_memory.TUNABLE],
    ),
    (host_memory.TUNABLE, [host_memory.TUNABLE]),  # already set: runs once
  ],
)
def test_relaunch_runs_the_script_again_with_the_tunable_once(tmp_path, start, runs):
  script, log = tmp_path / "s.py", tmp_path / "runs.txt"
  script.write_text(_RELAUNCH)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("GLIBC_TUNABLES", None)
  if start:
    env["GLIBC_TUNABLES"] = start
  out = subprocess.run(
    [sys.executable, str(script), str(log)], env=env, capture_output=True, text=True, check=True
  )
  assert out.stdout.split() == ["True", "True"], out.stderr
  assert log.read_text().splitlines() == runs


@glibc
@needs_tunable
def test_no_relaunch_of_a_script_read_from_stdin(tmp_path):
  log = tmp_path / "runs.txt"
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  out = subprocess.run(
    [sys.executable, "-", str(log)],
    input=_RELAUNCH,
    env=dict(env, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    check=True,
  )
  assert out.stdout.split() == ["True", "False"], out.stderr  # kept, with one arena instead
  assert log.read_text().splitlines() == ["-"]


def test_no_relaunch_once_jax_has_started(monkeypatch):
  jax.devices()
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.setattr(host_memory.os, "execve", lambda *a: pytest.fail("re-executed"))
  host_memory.relaunch_with_tunable()  # returns: the process has state a re-run would lose


# The same kind of step; prints the kilobytes of its heap on huge pages (AnonHugePages summed
# over the VMAs advised MADV_HUGEPAGE, "hg" in smaps) and the size of those VMAs in MiB.
_HUGE = textwrap.dedent("""
    import sys
    from gemmax import host_memory
    kept = host_memory.keep_host_memory() if sys.argv[1] == "keep" else False
    import jax, jax.numpy as jnp
    x = jnp.ones((3500, 3500), jnp.float32)
    jax.jit(lambda x: (jnp.sin(x) @ x[0]).sum())(x).block_until_ready()
    huge_kb, advised, size = 0, 0, 0
    for line in open("/proc/self/smaps"):
      head = line.split()[0]
      if "-" in head and ":" not in head:
        lo, hi = (int(a, 16) for a in head.split("-"))
        size = hi - lo
      elif line.startswith("AnonHugePages:"):
        pages = int(line.split()[1])
      elif line.startswith("VmFlags:") and " hg" in line:
        huge_kb += pages
        advised += size
    print(kept, huge_kb, advised >> 20)
""")


@glibc
@pytest.mark.skipif(
  host_memory.thp_mode() != "madvise",
  reason="the kernel's huge-page mode is not madvise: it backs the heap with "
  "huge pages (always) or never, whatever gemmax advises",
)
def test_heap_is_advised_onto_huge_pages():
  kept, huge_kb, advised_mib = _probe(_HUGE, "keep")
  assert kept
  assert advised_mib >= 2 * host_memory.HUGE_PAGE_HEAP >> 20, advised_mib
  assert huge_kb >= 32 << 10, huge_kb  # the step's 48 MiB temporary, on 2 MiB pages
  _, plain_kb, plain_mib = _probe(_HUGE, "plain")
  assert plain_mib == 0 and plain_kb == 0, (plain_mib, plain_kb)


def test_too_late_once_jax_has_started():
  jax.devices()
  assert host_memory.keep_host_memory() is False


def test_platform_and_switch(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_memory.runs_on_cpu()
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not host_memory.runs_on_cpu()
  assert host_memory.keep_on_cpu() is False  # not a CPU run: untouched
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv(host_memory.ENV_SWITCH, "0")
  assert host_memory.keep_on_cpu() is False


def test_no_room_for_the_huge_page_heap_restores_the_pad(monkeypatch):
  calls = []
  libc = types.SimpleNamespace(  # malloc refuses the block, as under strict overcommit
    mallopt=lambda param, value: calls.append((param, value)) or 1,
    malloc=lambda size: None,
    free=lambda ptr: None,
    sbrk=lambda n: 0,
    madvise=lambda *args: 0,
  )
  monkeypatch.setattr(host_memory, "thp_mode", lambda: "madvise")
  assert host_memory.advise_huge_pages(libc) is False
  assert calls == [
    (host_memory._M_TOP_PAD, host_memory.HUGE_PAGE_HEAP),
    (host_memory._M_TOP_PAD, host_memory._DEFAULT_TOP_PAD),
  ]
