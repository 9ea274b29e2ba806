"""What this CPU can do at best, measured: the ceilings behind the train-step and decode goals.

    python benchmarks/cpu_roofline.py

1. Matmul rate (GFLOP/s) on the shapes that make up benchmarks/train_step.py's step, for XLA:CPU,
   torch and numpy (whichever BLAS it links), all on every core. The best rate bounds any step:
   166.6 GFLOP of matmuls (counted from the compiled HLO of the LoRA step) take at least
   166.6 / rate seconds, whatever else the step does.
2. Streaming read bandwidth (GB/s): a sum over 256 MiB with torch (1 and all threads) and XLA.
   Batch-1 decode reads every weight once per token, so weight bytes / bandwidth bounds it.

3. The peers, timed in the same run with the code of benchmarks/train_step.py and
   benchmarks/decode.py: the transformers + peft LoRA step (median; the faster of 1 and all
   threads) and transformers' batch-1 greedy decode (static cache, median of 3).

Last line: `train_ceiling_vs_peft=<r> decode_b1_ceiling_vs_hf=<r>`, the best ratio any
implementation could reach at the measured peak with zero time for anything else. This host's speed
drifts (other tenants), so only ratios from one run mean anything.
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

STEP_GFLOP = 166.6  # LoRA step of benchmarks/train_step.py, forward 80.3 + backward 86.4
SHAPES = [(1024, 512, 2048), (1024, 2048, 512), (1024, 512, 8192), (1024, 512, 512)]
# Batch-1 decode of benchmarks/decode.py: 8 x (q, k, v, o, gate, up, down) + lm_head, float32.
DECODE_WEIGHT_BYTES = 4 * (8 * (2 * 512 * 512 + 2 * 512 * 256 + 3 * 512 * 2048) + 512 * 8192)


def best_seconds(fn, repeats=5, inner=10):
  fn()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(inner):
      out = fn()
    jax.block_until_ready(out) if isinstance(out, jax.Array) else None
    best = min(best, (time.perf_counter() - t) / inner)
  return best


def peers(cores):
  """(peft LoRA step seconds, transformers batch-1 decode tokens/s), timed here."""
  import torch

  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import decode
  import train_step

  step = train_step.torch_step("lora")
  medians = []
  for threads in sorted({1, cores}):
    torch.set_num_threads(threads)
    medians.append(statistics.median(w for w, _ in train_step.timed(step, 5)[1:]))
  torch.set_num_threads(cores)
  with tempfile.TemporaryDirectory() as tmp:
    hf = decode.build(tmp)
  new = 128
  run = decode.hf_runner(hf, 1, new, "static")
  runs = [run() for _ in range(3)]
  return min(medians), new / statistics.median(runs)


def main():
  import torch

  cores = len(os.sched_getaffinity(0))
  torch.set_num_threads(cores)
  rng = np.random.default_rng(0)
  print(f"{cores} cores, jax {jax.__version__}, torch {torch.__version__}, numpy {np.__version__}")
  print("| m x k x n | XLA GFLOP/s | torch GFLOP/s | numpy GFLOP/s |\n|---|---:|---:|---:|")
  best_rate = 0.0
  dot = jax.jit(jnp.dot)
  for m, k, n in SHAPES:
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    flop = 2 * m * k * n / 1e9
    rates = [
      flop / best_seconds(lambda: dot(ja, jb)),
      flop / best_seconds(lambda: ta @ tb),
      flop / best_seconds(lambda: a @ b),
    ]
    best_rate = max(best_rate, *rates)
    print(f"| {m} x {k} x {n} | " + " | ".join(f"{r:.0f}" for r in rates) + " |")
  big = np.ones(64 * 2**20, np.float32)  # 256 MiB, far beyond the caches
  tb, jb = torch.from_numpy(big), jnp.asarray(big)
  total = jax.jit(jnp.sum)
  bw = {}
  for threads in sorted({1, cores}):
    torch.set_num_threads(threads)
    bw[f"torch sum, {threads} thread(s)"] = big.nbytes / best_seconds(tb.sum, 3, 5) / 1e9
  bw["XLA sum"] = big.nbytes / best_seconds(lambda: total(jb), 3, 5) / 1e9
  print("\n| read 256 MiB | GB/s |\n|---|---:|")
  for k, v in bw.items():
    print(f"| {k} | {v:.1f} |")
  peft_s, hf_tok_s = peers(cores)
  step_s = STEP_GFLOP / best_rate
  token_s = DECODE_WEIGHT_BYTES / 1e9 / max(bw.values())
  train_ceiling = peft_s / step_s
  decode_ceiling = 1 / token_s / hf_tok_s
  print(
    f"\ntrain step >= {step_s * 1e3:.0f} ms ({STEP_GFLOP} GFLOP at {best_rate:.0f} GFLOP/s) "
    f"vs peft {peft_s * 1e3:.0f} ms; batch-1 decode >= {token_s * 1e3:.2f} ms/token "
    f"({DECODE_WEIGHT_BYTES / 1e6:.1f} MB at {max(bw.values()):.1f} GB/s) vs transformers "
    f"{hf_tok_s:.1f} tok/s"
  )
  print(f"train_ceiling_vs_peft={train_ceiling:.2f} decode_b1_ceiling_vs_hf={decode_ceiling:.2f}")


if __name__ == "__main__":
  main()
