"""Decode throughput: gemmax Sampler vs transformers' generate, same model, same machine, one run.

    JAX_PLATFORMS=cpu python benchmarks/decode.py [--new 128] [--out benchmarks/results/decode.md]

A random Llama (hidden 512, 8 layers, vocab 8192, float32) is built in transformers, saved, and
loaded into gemmax with gemmax.convert.load_hf. Both decode greedily 128 new tokens after a
16-token prompt at batch 1 and 8 (EOS disabled so every run makes all tokens). Compilation /
warm-up is excluded from both; timed runs alternate between the two (medians), so the drift of a
shared machine hits both alike. The last line is `decode_vs_hf_b1=<r> decode_vs_hf_b8=<r>`.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")

CONFIG = dict(
  vocab_size=8192,
  hidden_size=512,
  intermediate_size=2048,
  num_hidden_layers=8,
  num_attention_heads=8,
  num_key_value_heads=4,
  head_dim=64,
  max_position_embeddings=1024,
  rms_norm_eps=1e-5,
  rope_theta=500000.0,
  tie_word_embeddings=False,
  bos_token_id=1,
  eos_token_id=None,
  pad_token_id=0,
)
PROMPT = 16


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo: ratios move with the host (AVX2 vs AVX-512, cache sizes)."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or "CPU"


def build(tmp):
  import torch
  import transformers

  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(**CONFIG)
  hf = transformers.LlamaForCausalLM(cfg).float().eval()
  hf.save_pretrained(tmp, safe_serialization=True)
  return hf


def hf_runner(hf, batch, new, cache):
  """A function that runs transformers' greedy generate once and returns its seconds (warmed up)."""
  import torch

  ids = torch.randint(
    3, CONFIG["vocab_size"], (batch, PROMPT), generator=torch.Generator().manual_seed(1)
  )
  kw = dict(
    max_new_tokens=new,
    min_new_tokens=new,
    do_sample=False,
    pad_token_id=0,
    attention_mask=torch.ones_like(ids),
  )
  if cache == "static":
    kw["cache_implementation"] = "static"

  def run():
    with torch.inference_mode():
      t = time.perf_counter()
      out = hf.generate(ids, **kw)
      seconds = time.perf_counter() - t
    assert out.shape == (batch, PROMPT + new), out.shape
    return seconds

  run()  # warm-up
  return run


def gemmax_runner(model, batch, new):
  """(a function that runs Sampler.generate once and returns its seconds, compile seconds)."""
  from gemmax.sampling import Sampler

  ids = np.random.RandomState(1).randint(3, CONFIG["vocab_size"], (batch, PROMPT)).tolist()
  sampler = Sampler(model)

  def run():
    t = time.perf_counter()
    r = sampler.generate(ids, new)
    seconds = time.perf_counter() - t
    assert all(len(x) == new for x in r.tokens)
    return seconds

  return run, run()  # the first call compiles


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--new", type=int, default=128)
  ap.add_argument("--rounds", type=int, default=5, help="interleaved timed runs per side")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "decode.md"))
  args = ap.parse_args()
  import torch
  from gemmax.convert import load_hf

  with tempfile.TemporaryDirectory() as tmp:
    hf = build(tmp)
    model = load_hf(tmp)
  cache = "static"
  try:
    hf_runner(hf, 1, 4, "static")
  except Exception as e:  # noqa: BLE001 - report which cache was used, whatever failed
    print(f"static cache failed on this machine ({type(e).__name__}: {e}); using dynamic")
    cache = "dynamic"
  rows, ratios = [], {}
  for batch in (1, 8):
    hf_run = hf_runner(hf, batch, args.new, cache)
    gx_run, compile_s = gemmax_runner(model, batch, args.new)
    hf_s, gx_s = [], []
    for r in range(args.rounds):  # interleaved, alternating who goes first: drift hits both
      for run, out in ((hf_run, hf_s), (gx_run, gx_s))[:: 1 if r % 2 == 0 else -1]:
        out.append(run())
    hf_tps = batch * args.new / statistics.median(hf_s)
    gx_tps = batch * args.new / statistics.median(gx_s)
    ratios[batch] = gx_tps / hf_tps
    rows.append((batch, gx_tps, hf_tps, ratios[batch], compile_s))
    print(
      f"batch {batch}: gemmax {gx_tps:,.0f} tok/s, transformers ({cache} cache) "
      f"{hf_tps:,.0f} tok/s, ratio {ratios[batch]:.2f}x (gemmax compile {compile_s:.1f}s)"
    )
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  machine = (
    f"{platform.machine()} {cpu_name()}, {os.cpu_count()} cores; torch threads "
    f"{torch.get_num_threads()}; load average at the end {load} (shared machine)"
  )
  lines = [
    "# Decode throughput: gemmax Sampler vs transformers generate",
    "",
    f"Date: {time.strftime('%Y-%m-%d')}. Machine: {machine}. Produced by `benchmarks/decode.py`.",
    "",
    "Model: random Llama, hidden 512, 8 layers, 8 heads / 4 KV heads, head_dim 64, MLP 2048, "
    f"vocab 8192, float32. Greedy, {PROMPT}-token prompt, {args.new} new tokens (EOS off), median "
    f"of {args.rounds} interleaved timed runs per side after a warm-up; compile time excluded "
    "and listed. "
    f"transformers uses `generate(..., cache_implementation=\"{cache}\")`"
    + (
      " (static cache)." if cache == "static" else " (the static cache failed here; dynamic cache)."
    ),
    "",
    "| batch | gemmax tok/s | transformers tok/s | ratio | gemmax compile s |",
    "|---|---|---|---|---|",
  ]
  lines += [f"| {b} | {g:,.0f} | {h:,.0f} | {r:.2f}x | {c:.1f} |" for b, g, h, r, c in rows]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"decode_vs_hf_b1={ratios[1]:.2f} decode_vs_hf_b8={ratios[8]:.2f}")


if __name__ == "__main__":
  main()
