"""JAX's persistent compilation cache, on for gemmax's scripts.

A real model's programs take long to compile on a CPU host (SmolLM2-135M's 30 layers are unrolled
in each program), and every run of a script compiles them again. With the cache a second run of
the same job loads them instead: the main job's 41 s of compiling fell to 23 s on a 2-core CPU,
where loading a program still costs seconds (benchmarks/RESULTS.md, ninth session). gemmax's scripts
call `enable()` before they build anything; `import gemmax` alone changes no global JAX setting,
and a notebook or a user script can call it too.

The cache lives in `$GEMMAX_CACHE/xla/<host>` (default `~/.cache/gemmax/xla/<host>`): `<host>`
names the processor model and its instruction-set flags, so a home directory shared by unlike
machines never hands one the other's machine code (XLA:CPU refuses such an entry, and JAX then
compiles afresh with a warning). JAX keeps only programs that took at least a second to compile
and evicts the least recently used beyond `MAX_BYTES`. A cache directory the user chose already
(`JAX_COMPILATION_CACHE_DIR` or `jax.config`) is kept; `GEMMAX_COMPILE_CACHE=0` turns it off.
"""

from __future__ import annotations

import hashlib
import os
import platform

from gemmax.cache import cache_dir

MAX_BYTES = 2 << 30  # an entry of the real model's train step is ~2 MB
ENV_SWITCH = "GEMMAX_COMPILE_CACHE"  # "0": off, like host_memory's switch


def host_key(cpuinfo: str | None = None) -> str:
  """A short name for this machine's processor: its model and instruction-set flags, read from
  `/proc/cpuinfo` (or the text given)."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:  # not Linux: the platform's own description
      cpuinfo = f"model name: {platform.processor()}"
  fields = {}
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    if key.strip() in ("model name", "flags", "Features", "CPU implementer", "CPU part"):
      fields.setdefault(key.strip(), value.strip())  # the first processor's
  digest = hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()[:12]
  return f"{platform.machine() or 'cpu'}-{digest}"


def cache_path() -> str:
  return os.path.join(cache_dir(), "xla", host_key())


def enable() -> str | None:
  """Turn JAX's persistent compilation cache on (see the module docstring); returns its directory,
  or None when `GEMMAX_COMPILE_CACHE` turns it off. Call it before the first compilation."""
  import jax

  if os.environ.get(ENV_SWITCH, "1") == "0":
    return None
  chosen = jax.config.jax_compilation_cache_dir
  if chosen:
    return chosen
  path = cache_path()
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  return path
