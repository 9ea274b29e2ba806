"""Memory per device of parameters + optimizer state for the real presets, allocating nothing.

Shapes come from jax.eval_shape (nnx.eval_shape) of the model, shardings from gemmax.sharding's
default rules on simulated CPU meshes; each tensor counts the bytes of its per-device shard.
Assumptions: LoRA = bf16 frozen base + rank-16 all-linear f32 adapters + Adam (m, v in f32);
full fine-tuning = f32 master params + Adam (m, v in f32). Gradients (one more copy of the
trainable params, transient), activations and XLA workspace are NOT included.

  python benchmarks/memory_table.py  -> prints the table and writes benchmarks/results/sharding.md
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=64"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from gemmax import sharding as S  # noqa: E402
from gemmax.models import ModelConfig, Transformer  # noqa: E402

PRESETS = ["gemma2-9b", "gemma2-27b", "llama3.1-8b", "llama3.1-70b"]
MESHES = [(1, 1, 1), (1, 8, 1), (1, 4, 2), (1, 64, 1)]
GIB = 1024 ** 3


def abstract(config, lora: bool):
  def build():
    model = Transformer(config, rngs=nnx.Rngs(0))
    if lora:
      from gemmax import peft
      peft.apply(model, rank=16, alpha=32, targets="all-linear")
    return model
  return nnx.eval_shape(build)


def shard_bytes(state, mesh, multiplier=1.0) -> float:
  """Bytes of the largest per-device shard set: sum over tensors of shard size x itemsize."""
  shardings = S.model_shardings(state, mesh)
  total = 0
  for var, sh in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
    total += int(np.prod(sh.shard_shape(var.shape))) * np.dtype(var.dtype).itemsize
  return total * multiplier


def row(name: str, mesh_shape):
  n = int(np.prod(mesh_shape))
  mesh = S.make_mesh(*mesh_shape, devices=jax.devices()[:n])
  full = abstract(ModelConfig.preset(name, param_dtype="float32"), lora=False)
  full_gib = shard_bytes(nnx.state(full, nnx.Param), mesh, 3.0) / GIB  # params + m + v
  lora = abstract(ModelConfig.preset(name, param_dtype="bfloat16"), lora=True)
  from gemmax.peft.lora import LoRAParam
  adapters = nnx.state(lora, LoRAParam)
  base = nnx.state(lora, nnx.All(nnx.Param, nnx.Not(LoRAParam)))
  lora_gib = (shard_bytes(base, mesh) + shard_bytes(adapters, mesh, 3.0)) / GIB
  return lora_gib, full_gib


def main():
  header = "| model | params | " + " | ".join(
      f"mesh {d}x{f}x{t} ({d * f * t} dev) LoRA / full" for d, f, t in MESHES) + " |"
  lines = [header, "|" + "---|" * (len(MESHES) + 2)]
  from gemmax.models import param_count
  for name in PRESETS:
    cells = []
    for m in MESHES:
      lo, fu = row(name, m)
      cells.append(f"{lo:.1f} / {fu:.1f}")
    lines.append(f"| {name} | {param_count(ModelConfig.preset(name)) / 1e9:.2f}B | "
                 + " | ".join(cells) + " |")
    print(lines[-1], flush=True)
  table = "\n".join(lines)
  print(table)
  return table


if __name__ == "__main__":
  out = main()
  if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
      f.write(out + "\n")
