"""Attention benchmark. CPU: time and peak temp memory of xla vs xla_chunked (long context, window).
GPU: TFLOP/s (unmasked work only) of pallas, xla, cudnn, fwd and fwd+bwd, and local/global ratio.

Usage: python benchmarks/attention.py [--cpu-seqs 8192,16384,32768] [--gpu]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from gemmax.ops import attention


def _inputs(b, t, n, kh, h, dtype):
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  return (
    jax.random.normal(ks[0], (b, t, n, h), dtype),
    jax.random.normal(ks[1], (b, t, kh, h), dtype),
    jax.random.normal(ks[2], (b, t, kh, h), dtype),
  )


def _time(fn, args, reps):
  jax.block_until_ready(fn(*args))  # compile + warm up
  t0 = time.perf_counter()
  for _ in range(reps):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t0) / reps


def _fn(impl, window, softcap, grad):
  def f(q, k, v):
    return attention(q, k, v, impl=impl, sliding_window=window, softcap=softcap)

  if not grad:
    return jax.jit(f)
  return jax.jit(jax.grad(lambda q, k, v: f(q, k, v).astype(jnp.float32).sum(), (0, 1, 2)))


def cpu(seqs, window=4096, b=1, n=2, kh=1, h=64, max_run_bytes=6 << 30):
  print(f"CPU: batch {b}, heads {n}, kv_heads {kh}, head_dim {h}, f32, window {window}, forward")
  print("| seq | impl | temp memory (MiB) | time (s) | chunked/xla memory |")
  print("|---|---|---|---|---|")
  for t in seqs:
    args = _inputs(b, t, n, kh, h, jnp.float32)
    mem = {}
    for impl in ("xla", "xla_chunked"):
      fn = _fn(impl, window, None, False)
      mem[impl] = fn.lower(*args).compile().memory_analysis().temp_size_in_bytes
      run = mem[impl] <= max_run_bytes
      secs = f"{_time(fn, args, 1):.2f}" if run else "not run (memory)"
      ratio = f"{mem['xla_chunked'] / mem['xla']:.4f}" if impl == "xla_chunked" else ""
      print(f"| {t} | {impl} | {mem[impl] / 2**20:.1f} | {secs} | {ratio} |", flush=True)


def _useful_flops(t, n, h, window, grad):
  # Visible (q, k) pairs under causal + window, times 4*h flops (QK^T and PV); bwd is 2.5x fwd.
  w = t if window is None else min(window, t)
  pairs = w * (w + 1) // 2 + (t - w) * w
  fwd = 4 * pairs * n * h
  return fwd * 3.5 if grad else fwd


def gpu(seqs=(2048, 8192, 16384), window=4096, b=1, n=8, kh=4):
  print(f"GPU {jax.devices()[0].device_kind}: batch {b}, heads {n}, kv_heads {kh}, bf16")
  print("| head_dim | seq | impl | pass | local TFLOP/s | global TFLOP/s | local/global time |")
  print("|---|---|---|---|---|---|---|")
  for h in (128, 256):
    for t in seqs:
      args = _inputs(b, t, n, kh, h, jnp.bfloat16)
      for impl in ("pallas", "xla", "cudnn"):
        for grad in (False, True):
          res = {}
          for name, w in (("local", window), ("global", None)):
            try:
              secs = _time(_fn(impl, w, None, grad), args, 5)
              res[name] = (secs, _useful_flops(t, n, h, w, grad) / secs / 1e12)
            except Exception as e:  # e.g. xla out of memory at long seq
              res[name] = (float("nan"), float("nan"))
              print(f"<!-- {impl} {name} t={t} h={h}: {type(e).__name__}: {str(e)[:120]} -->")
          ratio = res["local"][0] / res["global"][0]
          print(
            f"| {h} | {t} | {impl} | {'fwd+bwd' if grad else 'fwd'} | {res['local'][1]:.1f} "
            f"| {res['global'][1]:.1f} | {ratio:.2f} |",
            flush=True,
          )


if __name__ == "__main__":
  p = argparse.ArgumentParser()
  p.add_argument("--cpu-seqs", default="8192,16384,32768")
  p.add_argument("--gpu", action="store_true")
  a = p.parse_args()
  if a.gpu or jax.default_backend() == "gpu":
    gpu()
  else:
    cpu([int(s) for s in a.cpu_seqs.split(",")])
