"""Host peak memory of gemmax.convert.load_hf relative to the model's bytes.

Writes a random checkpoint with save_hf, then loads it in a fresh process and reports
(peak RSS during load - RSS before load) / model bytes.
Run: JAX_PLATFORMS=cpu python benchmarks/load_memory.py [--hidden 1024 --layers 8]
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def child(path, dtype):
  import jax
  import numpy as np
  import psutil
  from flax import nnx
  from gemmax.convert import load_hf
  from gemmax.models import param_count

  jax.numpy.zeros(1).block_until_ready()  # backend up before the baseline
  before = psutil.Process().memory_info().rss
  model = load_hf(path, dtype=dtype)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  nbytes = param_count(model) * jax.numpy.dtype(dtype).itemsize
  largest = max(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model)))
  print(
    f"{dtype}: params {param_count(model):,}, model {nbytes / 2**20:.0f} MiB, "
    f"load peak over baseline {(peak - before) / 2**20:.0f} MiB, ratio {(peak - before) / nbytes:.2f} (largest tensor {largest / param_count(model):.0%} of the model)"
  )


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--hidden", type=int, default=1024)
  ap.add_argument("--layers", type=int, default=16)
  ap.add_argument("--child", nargs=2)
  ap.add_argument("--write")
  args = ap.parse_args()
  if args.child:
    return child(*args.child)
  if not args.write:  # separate processes: ru_maxrss survives exec, so the parent stays small
    with tempfile.TemporaryDirectory() as d:
      subprocess.run(
        [
          sys.executable,
          __file__,
          "--write",
          d,
          "--hidden",
          str(args.hidden),
          "--layers",
          str(args.layers),
        ],
        check=True,
      )
      for dtype in ("float32", "bfloat16"):
        subprocess.run([sys.executable, __file__, "--child", d, dtype], check=True)
    return
  from flax import nnx
  from gemmax.convert import save_hf
  from gemmax.models import ModelConfig, Transformer

  cfg = ModelConfig.preset(
    "llama3-tiny",
    vocab_size=32000,
    hidden_size=args.hidden,
    intermediate_size=4 * args.hidden,
    num_hidden_layers=args.layers,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=args.hidden // 8,
  )
  save_hf(Transformer(cfg, rngs=nnx.Rngs(0)), args.write)


if __name__ == "__main__":
  main()
