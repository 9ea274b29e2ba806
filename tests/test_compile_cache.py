"""gemmax's scripts keep compiled programs in JAX's persistent cache, per host, in $GEMMAX_CACHE."""

import os
import subprocess
import sys

from gemmax import compile_cache

# A program that compiles (min compile time 0 so that a tiny one is kept), under gemmax.cli.run
# as every experiments/ script starts; it prints the cache directory the script used.
SCRIPT = """
import jax, jax.numpy as jnp
from gemmax import cli

def main(argv):
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.ones(8)).block_until_ready()
  print("CACHE", jax.config.jax_compilation_cache_dir)

cli.run(main, "cache_probe.py")
"""


def _run(cache_root):
  """Runs SCRIPT with GEMMAX_CACHE=cache_root; returns (cache directory used, stderr)."""
  env = dict(os.environ, GEMMAX_CACHE=str(cache_root), JAX_LOG_COMPILES="1")
  r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout.split("CACHE ", 1)[1].strip(), r.stderr


def test_a_second_run_loads_the_program_from_the_host_cache(tmp_path, monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.delenv("GEMMAX_COMPILE_CACHE", raising=False)
  first, err1 = _run(tmp_path)
  assert first == os.path.join(str(tmp_path), "xla", compile_cache.host_key())
  assert os.listdir(first), "the first run wrote no cache entry"
  assert "Persistent compilation cache hit" not in err1
  second, err2 = _run(tmp_path)
  assert second == first
  assert "Persistent compilation cache hit" in err2


def test_the_users_own_cache_directory_is_kept(tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
  monkeypatch.delenv("GEMMAX_COMPILE_CACHE", raising=False)
  used, _ = _run(tmp_path / "gemmax")
  assert used == str(tmp_path / "mine")
  assert os.listdir(tmp_path / "mine") and not os.path.exists(tmp_path / "gemmax" / "xla")


def test_off_switch(tmp_path, monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("GEMMAX_COMPILE_CACHE", "0")
  used, _ = _run(tmp_path)
  assert used == "None" and not os.path.exists(tmp_path / "xla")


def test_host_key_names_the_processor_and_its_instruction_sets():
  intel = "processor: 0\nmodel name: Xeon\nflags: fpu avx2 avx512f amx_tile\n\nprocessor: 1\n"
  amd = "processor: 0\nmodel name: EPYC\nflags: fpu avx2 avx512f avx512_bf16\n"
  assert compile_cache.host_key(intel) == compile_cache.host_key(intel)
  assert compile_cache.host_key(intel) != compile_cache.host_key(amd)
  assert compile_cache.host_key(intel) != compile_cache.host_key(intel.replace(" amx_tile", ""))
