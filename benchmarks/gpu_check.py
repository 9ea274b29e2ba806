"""GPU figures in one device call: Pallas attention vs xla and cudnn, and a Gemma-2-2B train step.

A device machine is lent for ~15 minutes in all, so this script is prepared to run once, unattended:
every measurement is guarded (a compile error, OOM or unsupported impl becomes a row, never a
crash), jobs run most-important first under a time budget (`--budget-s`; what is left is recorded
as skipped), and the markdown table and JSON are rewritten after every job, so a run killed at its
timeout still leaves a partial table.

Measured (sizes in `GPU`; `--dry-run` uses `DRY`: tiny, on CPU, Pallas in interpret mode):
  check  values and dq/dk/dv of pallas, xla (bf16) and cudnn against xla in float32, one shape.
  attn   forward and forward+backward TFLOP/s, counting only the unmasked (q, k) pairs, of
         pallas, xla and cudnn (cudnn only without softcap): seq x head_dim x window x softcap,
         bf16, GQA 2:1.
  ratio  a local layer's time over a global layer's (window 4096 at seq 8192; ideal 0.75).
  train  LoRA and full fine-tuning steps of a gemma2-2b-shaped model (random weights, bf16):
         tokens/s and MFU (gemmax.models.analytic_flops over the device's peak bf16 FLOP/s), with
         attn_impl pallas or cudnn (softcap dropped: cuDNN has none) and remat none or save_dots.

    python benchmarks/gpu_check.py --out "$OUT" [--budget-s 330] [--only attn,train/lora]
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpucheck

Writes gpu_check.md and gpu_check.json to --out. Last line: `gpu_check
pallas_fwd_tflops_hd128_s8192=<x> local_over_global=<r> lora_mfu=<m>` (nan where not measured;
the dry run names its own sizes).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import math
import os
import signal
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repo root: gemmax is not installed on the device
if "--dry-run" in sys.argv:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A full fine-tune of 2.6B float32 params with AdamW needs ~55 GB; jax's default share is 75%.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import attention as attn_bench  # noqa: E402  (benchmarks/attention.py: inputs, jitted fns, FLOPs)
from gemmax.ops import attention  # noqa: E402

MD, JS = "gpu_check.md", "gpu_check.json"
TOL = 3e-2  # max |err| / max |ref| for bf16 inputs against a float32 reference


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Everything that differs between the device run and the CPU dry run."""

  seqs: tuple
  window: int
  head_dims: tuple
  tokens: int  # per attention call: batch = tokens // seq keeps the GPU equally busy
  heads: int
  kv_heads: int
  time_s: float  # timed calls per measurement last about this long (at least one)
  check: tuple  # (batch, seq, heads, kv_heads) of the correctness check
  check_window: int
  model: str
  train_seq: int
  batch: int
  train_steps: int
  headline_hd: int
  ratio_seq: int
  est_s: tuple  # (attention job, train job): seconds a job may take, for the budget
  softcaps: tuple = (50.0, None)


GPU = Sizes(
  seqs=(2048, 8192, 16384),
  window=4096,
  head_dims=(128, 256),
  tokens=16384,
  heads=16,
  kv_heads=8,
  time_s=0.25,
  check=(2, 1024, 4, 2),
  check_window=256,
  model="gemma2-2b",
  train_seq=2048,
  batch=1,
  train_steps=5,
  headline_hd=128,
  ratio_seq=8192,
  est_s=(4, 60),
)
DRY = Sizes(
  seqs=(128, 256),
  window=64,
  head_dims=(64,),
  tokens=256,
  heads=4,
  kv_heads=2,
  time_s=0.0,
  check=(1, 64, 4, 2),
  check_window=16,
  model="gemma2-tiny",
  train_seq=128,
  batch=1,
  train_steps=2,
  headline_hd=64,
  ratio_seq=256,
  est_s=(0, 0),
)

# Dense bf16 tensor-core peaks (no sparsity), matched in order against jax's device_kind.
PEAK_BF16 = (
  ("H200", 989e12, "H200 dense bf16"),
  ("H100 PCIe", 756e12, "H100 PCIe dense bf16"),
  ("H100", 989e12, "H100 SXM dense bf16"),
)

# Train variants: (method, attn impl, remat, keep softcap), most wanted first.
TRAIN = (
  ("lora", "pallas", "none", True),
  ("full", "pallas", "none", True),
  ("lora", "cudnn", "none", False),
  ("lora", "pallas", "save_dots", True),
)
TRAIN_LATER = (
  ("lora", "pallas", "none", False),
  ("full", "cudnn", "none", False),
  ("full", "pallas", "save_dots", True),
  ("lora", "cudnn", "save_dots", False),
  ("full", "cudnn", "save_dots", False),
  ("lora", "xla", "none", True),
)


def peak_flops(kind: str, override_tflops: float | None):
  """(peak bf16 FLOP/s or nan, what was assumed)."""
  if override_tflops:
    return override_tflops * 1e12, f"{override_tflops:g} TFLOP/s (--peak-tflops)"
  for name, peak, what in PEAK_BF16:
    if name.lower() in kind.lower():
      return peak, f"{peak / 1e12:.0f} TFLOP/s ({what}, from device kind {kind!r})"
  return math.nan, f"unknown for device kind {kind!r}: MFU not computed (give --peak-tflops)"


def _sc(softcap):
  return "none" if softcap is None else f"{softcap:g}"


# --- jobs ------------------------------------------------------------------------------------
def _out_and_grads(sz: Sizes, h, impl, softcap, dtype):
  """attention(...) and its dq, dk, dv under a fixed random cotangent, on the check shape."""
  b, t, n, kh = sz.check
  q, k, v = (x.astype(dtype) for x in attn_bench._inputs(b, t, n, kh, h, jnp.bfloat16))
  ct = jax.random.normal(jax.random.PRNGKey(7), q.shape, jnp.float32).astype(dtype)

  def f(q, k, v):
    out, vjp = jax.vjp(
      lambda q, k, v: attention(
        q, k, v, impl=impl, sliding_window=sz.check_window, softcap=softcap
      ),
      q,
      k,
      v,
    )
    return (out, *vjp(ct))

  return jax.jit(f)(q, k, v)


@functools.lru_cache(maxsize=None)
def _reference(sz: Sizes, h, softcap):
  """xla in float32 on the same (bf16-valued) inputs, full-precision matmuls; one per shape."""
  with getattr(jax, "default_matmul_precision", lambda _: contextlib.nullcontext())("highest"):
    return _out_and_grads(sz, h, "xla", softcap, jnp.float32)


def check_job(sz: Sizes, h: int, impl: str, softcap):
  """Values and gradients of `impl` in bf16 vs the float32 reference: relative max error."""

  def run():
    got = _out_and_grads(sz, h, impl, softcap, jnp.bfloat16)
    errs = {
      f"err_{name}": float(jnp.abs(g.astype(jnp.float32) - r).max() / jnp.abs(r).max())
      for name, g, r in zip(("out", "dq", "dk", "dv"), got, _reference(sz, h, softcap))
    }
    worst = max(errs.values())
    return {"status": "pass" if worst <= TOL else "FAIL", "max_err": worst, **errs}

  return run


def _seconds(fn, args, time_s):
  """Seconds per call: compile and warm up, time one call, then enough calls queued back to back
  (one block at the end, so dispatch overlaps the kernels) to last about time_s."""
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  one = time.perf_counter() - t0
  reps = max(1, min(50, int(time_s / max(one, 1e-6))))
  if reps == 1:
    return one
  t0 = time.perf_counter()
  for _ in range(reps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / reps


def attn_job(sz: Sizes, h, t, window, softcap, impl, grad):
  def run():
    b = max(1, sz.tokens // t)
    args = attn_bench._inputs(b, t, sz.heads, sz.kv_heads, h, jnp.bfloat16)
    secs = _seconds(attn_bench._fn(impl, window, softcap, grad), args, sz.time_s)
    flops = b * attn_bench._useful_flops(t, sz.heads, h, window, grad)
    return {"status": "ok", "batch": b, "ms": secs * 1e3, "tflops": flops / secs / 1e12}

  return run


def train_job(sz: Sizes, method, impl, remat, keep_softcap, peak):
  """One fine-tuning step of `sz.model` (random weights): full fine-tuning trains float32
  params (bf16 compute), LoRA rank 16 on all linear layers keeps a bf16 base; AdamW."""

  def run():
    from flax import nnx

    from gemmax import peft
    from gemmax.models import ModelConfig, Transformer, analytic_flops
    from gemmax.train import OptimizerConfig, make_optimizer, make_train_step, split_model

    cfg = ModelConfig.preset(
      sz.model,
      dtype="bfloat16",
      attn_impl=impl,
      remat=remat,
      param_dtype="bfloat16" if method == "lora" else "float32",
    )
    if not keep_softcap:
      cfg = dataclasses.replace(cfg, attn_logit_softcapping=None)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    if method == "lora":
      peft.apply(model, method="lora", rank=16, alpha=32, targets="all-linear")
    sm = split_model(model)
    del model
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-5, warmup_steps=0, steps=1000))
    b, t = sz.batch, sz.train_seq
    ids = jax.random.randint(jax.random.PRNGKey(0), (b, t + 1), 3, cfg.vocab_size, jnp.int32)
    # No segment_ids: one unpacked sequence per row, which every impl (cudnn too) takes.
    batch = {
      "input_ids": ids[:, :-1],
      "targets": ids[:, 1:],
      "loss_mask": jnp.ones((b, t), jnp.int32),
      "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
    }
    state = [sm.params, tx.init(sm.params)]
    rng = jax.random.key(0)
    t0 = time.perf_counter()
    step = make_train_step(sm.train_def, tx).lower(*state, sm.rest, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    mem = step.memory_analysis()
    times = []
    for _ in range(sz.train_steps + 1):  # the first is a warm-up
      t0 = time.perf_counter()
      state[0], state[1], metrics = step(*state, sm.rest, batch, rng)
      jax.block_until_ready(metrics["loss"])
      times.append(time.perf_counter() - t0)
    secs = statistics.median(times[1:])
    flops = analytic_flops(cfg, b, t)
    out = {
      "status": "ok",
      "step_ms": secs * 1e3,
      "tokens_per_s": b * t / secs,
      "tflops": flops / secs / 1e12,
      "mfu": flops / secs / peak,
      "compile_s": compile_s,
      "loss": float(metrics["loss"]),
      "batch": b,
      "seq": t,
    }
    if mem is not None:
      out["memory_gib"] = (
        mem.temp_size_in_bytes
        + mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
      ) / 2**30
    return out

  return run


def train_key(method, impl, remat, keep_softcap):
  return f"train/{method}/{impl}{'' if keep_softcap else '-nosoftcap'}/{remat}"


def attn_key(h, t, local, softcap, impl, grad):
  return (
    f"attn/hd{h}/s{t}/{'local' if local else 'global'}/softcap{_sc(softcap)}/{impl}/"
    f"{'fwdbwd' if grad else 'fwd'}"
  )


def plan(sz: Sizes, peak):
  """[(priority, key, est_s, fn)], in table order; run() sorts by priority (stable)."""
  jobs = []
  for h in sz.head_dims:
    for impl in ("pallas", "xla", "cudnn"):
      for sc in sz.softcaps:
        if impl != "cudnn" or sc is None:
          jobs.append(
            (0, f"check/hd{h}/{impl}/softcap{_sc(sc)}", sz.est_s[0], check_job(sz, h, impl, sc))
          )
  for h in sz.head_dims:
    for t in sz.seqs:
      for sc in sz.softcaps:
        for impl in ("pallas", "xla", "cudnn"):
          if impl == "cudnn" and sc is not None:
            continue
          head = t == sz.ratio_seq and (impl == "pallas" or (h == sz.headline_hd and sc is None))
          prio = 1 if head else {"pallas": 3, "cudnn": 4, "xla": 5}[impl]
          for grad in (False, True):
            for local in (True, False):
              jobs.append(
                (
                  prio,
                  attn_key(h, t, local, sc, impl, grad),
                  sz.est_s[0],
                  attn_job(sz, h, t, sz.window if local else None, sc, impl, grad),
                )
              )
  for prio, variants in ((2, TRAIN), (6, TRAIN_LATER)):
    for v in variants:
      jobs.append((prio, train_key(*v), sz.est_s[1], train_job(sz, *v, peak)))
  return jobs


def classify(e: BaseException) -> str:
  """A failed job's row status: OOM, unsupported (the impl refused these arguments), or error."""
  msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:160]
  text = str(e)
  if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
    return "OOM"
  if isinstance(e, (ValueError, NotImplementedError)):
    return f"unsupported: {msg}"
  return f"error: {msg}"


# --- results ---------------------------------------------------------------------------------
def _num(x, fmt):
  """A table cell: '-' where there is no value (the job failed or did not run)."""
  return "-" if x is None else "nan" if not math.isfinite(x) else format(x, fmt)


def _clean(x):
  """JSON has no NaN: non-finite floats become null."""
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  return None if isinstance(x, float) and not math.isfinite(x) else x


def ratio_rows(sz: Sizes, rows):
  """Local over global time at ratio_seq, per impl / head_dim / softcap / pass, from attn rows."""
  out = {}
  for h in sz.head_dims:
    for sc in sz.softcaps:
      for impl in ("pallas", "xla", "cudnn"):
        for grad in (False, True):
          loc = rows.get(attn_key(h, sz.ratio_seq, True, sc, impl, grad), {})
          glo = rows.get(attn_key(h, sz.ratio_seq, False, sc, impl, grad), {})
          if "ms" in loc and "ms" in glo:
            out[f"ratio/hd{h}/softcap{_sc(sc)}/{impl}/{'fwdbwd' if grad else 'fwd'}"] = {
              "status": "ok",
              "local_over_global": loc["ms"] / glo["ms"],
            }
  return out


def summary(sz: Sizes, rows):
  h, t = sz.headline_hd, sz.ratio_seq
  fwd = rows.get(attn_key(h, t, False, None, "pallas", False), {}).get("tflops", math.nan)
  r = rows.get(f"ratio/hd{h}/softcapnone/pallas/fwd", {}).get("local_over_global", math.nan)
  mfu = rows.get(train_key(*TRAIN[0]), {}).get("mfu", math.nan)
  return {f"pallas_fwd_tflops_hd{h}_s{t}": fwd, "local_over_global": r, "lora_mfu": mfu}


def _status(loc, glo):
  if loc["status"] == glo["status"]:
    return loc["status"]
  return f"local: {loc['status']}; global: {glo['status']}"


def markdown(sz: Sizes, meta, rows) -> str:
  lines = [
    f"## gpu_check: {meta['device']}"
    + (" (CPU DRY RUN: plumbing, not performance)" if meta["dry_run"] else ""),
    "",
    f"Date {meta['date']}; jax {meta['jax']}, flax {meta['flax']}, optax {meta['optax']}; "
    f"backend {meta['backend']}. Peak bf16 assumed: {meta['peak']}. "
    f"Budget {meta['budget_s']:.0f} s, elapsed {meta['elapsed_s']:.0f} s"
    f"{'' if meta['complete'] else ' (PARTIAL: still running or cut off)'}.",
    "",
    "### Correctness against xla in float32",
    "",
    f"bf16 inputs, (batch, seq, heads, kv_heads) = {sz.check}, window {sz.check_window}; "
    f"output and dq, dk, dv under a random cotangent; err = max |x - ref| / max |ref|, "
    f"pass when <= {TOL:g}.",
    "",
    "| head_dim | impl | softcap | result | max err | out | dq | dk | dv |",
    "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
  ]
  for key, row in rows.items():
    if key.startswith("check/"):
      _, h, impl, sc = key.split("/")
      lines.append(
        f"| {h[2:]} | {impl} | {sc[7:]} | {row['status']} | "
        + " | ".join(
          _num(row.get(k), ".1e") for k in ("max_err", "err_out", "err_dq", "err_dk", "err_dv")
        )
        + " |"
      )
  lines += [
    "",
    "### Attention TFLOP/s",
    "",
    f"Only unmasked (q, k) pairs counted; fwd+bwd = 3.5x fwd. bf16, {sz.heads} heads / "
    f"{sz.kv_heads} kv heads, batch x seq = {sz.tokens} tokens; local: window "
    f"{sz.window}, global: causal only.",
    "",
    "| head_dim | seq | softcap | impl | pass | local TFLOP/s | global TFLOP/s "
    "| local ms | global ms | local/global time | status |",
    "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
  ]
  for key, row in rows.items():
    parts = key.split("/")
    if parts[0] != "attn" or parts[3] != "local":
      continue
    glo = rows["/".join(parts[:3] + ["global"] + parts[4:])]
    ratio = row["ms"] / glo["ms"] if "ms" in row and "ms" in glo else None
    lines.append(
      f"| {parts[1][2:]} | {parts[2][1:]} | {parts[4][7:]} | {parts[5]} | "
      f"{'fwd+bwd' if parts[6] == 'fwdbwd' else 'fwd'} | "
      + " | ".join(_num(r.get(k), ".4g") for k in ("tflops", "ms") for r in (row, glo))
      + f" | {_num(ratio, '.3f')} | {_status(row, glo)} |"
    )
  lines += [
    "",
    "### Local over global layer time (pallas)",
    "",
    f"seq {sz.ratio_seq}, window {sz.window}: ideal {ideal_ratio(sz):.3f} (the ratio of "
    "unmasked pairs); target <= 0.8 at seq 8192.",
    "",
    "| head_dim | softcap | pass | local/global |",
    "| ---: | ---: | --- | ---: |",
  ]
  for key, row in rows.items():
    parts = key.split("/")
    if parts[0] == "ratio" and parts[3] == "pallas":
      lines.append(
        f"| {parts[1][2:]} | {parts[2][7:]} | {parts[4].replace('fwdbwd', 'fwd+bwd')} "
        f"| {_num(row['local_over_global'], '.3f')} |"
      )
  lines += [
    "",
    "### Train step",
    "",
    f"{sz.model} shape, random weights, bf16 compute, batch {sz.batch} x seq "
    f"{sz.train_seq}, AdamW; LoRA: rank 16 on all linear layers over a bf16 base; full: "
    "float32 params. MFU = analytic_flops (3x forward, attention counted dense) / step "
    "time / peak; memory: XLA's compiled estimate (arguments + temporaries + outputs - "
    "aliased). cudnn has no softcap, so its rows drop Gemma 2's attention softcap; "
    "the pallas row with the softcap dropped is the like-for-like comparison.",
    "",
    "| method | attn impl | softcap | remat | step ms | tokens/s | TFLOP/s | MFU "
    "| memory GiB | compile s | status |",
    "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
  ]
  for key, row in rows.items():
    parts = key.split("/")
    if parts[0] != "train":
      continue
    impl, _, drop = parts[2].partition("-")
    lines.append(
      f"| {parts[1]} | {impl} | {'dropped' if drop else 'kept'} | {parts[3]} | "
      + " | ".join(
        _num(row.get(k), f)
        for k, f in (
          ("step_ms", ".4g"),
          ("tokens_per_s", ",.0f"),
          ("tflops", ".4g"),
          ("mfu", ".1%"),
          ("memory_gib", ".3g"),
          ("compile_s", ".0f"),
        )
      )
      + f" | {row['status']} |"
    )
  return "\n".join(lines) + "\n"


def ideal_ratio(sz: Sizes):
  return attn_bench._useful_flops(sz.ratio_seq, 1, 1, sz.window, False) / attn_bench._useful_flops(
    sz.ratio_seq, 1, 1, None, False
  )


def _write(path, text):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


class Report:
  """Rows keyed by job, rewritten to --out as markdown and JSON after every change."""

  def __init__(self, out, sz, meta, keys):
    self.out, self.sz, self.meta, self.t0 = out, sz, meta, time.perf_counter()
    self.rows = {k: {"status": "pending"} for k in keys}
    os.makedirs(out, exist_ok=True)

  def set(self, key, row):
    self.rows[key] = row
    self.write()

  def write(self, complete=False):
    self.meta.update(elapsed_s=time.perf_counter() - self.t0, complete=complete)
    rows = {**self.rows, **ratio_rows(self.sz, self.rows)}
    summ = summary(self.sz, rows)
    _write(
      os.path.join(self.out, JS),
      json.dumps(_clean({"meta": self.meta, "summary": summ, "rows": rows}), indent=1) + "\n",
    )
    self.text = markdown(self.sz, self.meta, rows)
    _write(os.path.join(self.out, MD), self.text)
    return summ


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument(
    "--out", default=os.environ.get("OUT") or os.path.join(HERE, "results", "gpu_check")
  )
  ap.add_argument(
    "--budget-s",
    type=float,
    default=330.0,
    help="no job starts once it would end past this many seconds",
  )
  ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (Pallas interpreted)")
  ap.add_argument(
    "--only",
    default="",
    help="comma-separated key prefixes to run "
    "(e.g. check,attn/hd128,train/lora); the others are recorded as not selected",
  )
  ap.add_argument(
    "--peak-tflops",
    type=float,
    default=None,
    help="peak bf16 TFLOP/s for MFU (default: looked up from the device kind)",
  )
  args = ap.parse_args(argv)
  sz = DRY if args.dry_run else GPU
  if not args.dry_run and jax.default_backend() == "gpu":
    try:  # a quick rerun on the still-warm machine skips the compiles already done
      jax.config.update("jax_compilation_cache_dir", "/tmp/gemmax_jax_cache")
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    except Exception as e:  # noqa: BLE001  an optional speed-up
      print(f"gpu_check: no compilation cache ({e})", flush=True)
  kind = jax.devices()[0].device_kind
  peak, peak_what = peak_flops(kind, args.peak_tflops)
  import flax
  import optax

  meta = {
    "date": datetime.date.today().isoformat(),
    "device": kind,
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "peak": peak_what,
    "dry_run": args.dry_run,
    "budget_s": args.budget_s,
    "sizes": dataclasses.asdict(sz),
  }
  jobs = plan(sz, peak)
  rep = Report(args.out, sz, meta, [k for _, k, _, _ in jobs])
  print(
    f"gpu_check: {kind}, {len(jobs)} jobs, budget {args.budget_s:.0f} s, peak {peak_what}; "
    f"writing {os.path.join(args.out, MD)} and {JS}",
    flush=True,
  )

  def on_term(signum, frame):  # a timeout's SIGTERM: say which rows were never reached
    for k, row in rep.rows.items():
      if row["status"] == "pending":
        row["status"] = "not reached (terminated)"
    rep.write()
    sys.exit(124)

  signal.signal(signal.SIGTERM, on_term)
  only = [p for p in args.only.split(",") if p]
  for _, key, est, fn in sorted(jobs, key=lambda j: j[0]):
    elapsed = time.perf_counter() - rep.t0
    if only and not any(key.startswith(p) for p in only):
      rep.rows[key] = {"status": "not selected (--only)"}
      continue
    if elapsed + est > args.budget_s:
      rep.set(key, {"status": "skipped (time budget)"})
      continue
    t0 = time.perf_counter()
    try:
      row = fn()
    except Exception as e:  # noqa: BLE001  a failed measurement is a row, never a crash
      row = {"status": classify(e)}
    row["job_s"] = time.perf_counter() - t0
    gc.collect()
    rep.set(key, row)
    shown = {k: v for k, v in row.items() if k in ("tflops", "max_err", "mfu", "tokens_per_s")}
    print(
      f"[{elapsed:6.1f}s] {key}: {row['status']} "
      + " ".join(f"{k}={v:.4g}" for k, v in shown.items()),
      flush=True,
    )
  summ = rep.write(complete=True)
  print("\n" + rep.text)
  print("gpu_check " + " ".join(f"{k}={_num(v, '.4g')}" for k, v in summ.items()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
