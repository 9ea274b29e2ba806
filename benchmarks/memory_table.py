"""Memory per device of parameters + optimizer state for the real presets, allocating nothing.

Shapes come from jax.eval_shape (nnx.eval_shape) of the model, shardings from gemmax.sharding's
default rules on simulated CPU meshes; each tensor counts the bytes of its per-device shard.
Assumptions: LoRA = bf16 frozen base + rank-16 all-linear f32 adapters + Adam (m, v in f32);
full fine-tuning = f32 master params + Adam (m, v in f32). Gradients (one more copy of the
trainable params, transient), activations and XLA workspace are NOT included.

  python benchmarks/memory_table.py [preset ...]  -> prints the markdown table
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=64"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from gemmax import sharding as S  # noqa: E402
from gemmax.models import ModelConfig  # noqa: E402
from gemmax.train import abstract_train_state, train_state_bytes  # noqa: E402

PRESETS = ["gemma2-9b", "gemma2-27b", "llama3.1-8b", "llama3.1-70b"]
MESHES = [(1, 1, 1), (1, 8, 1), (1, 4, 2), (1, 64, 1)]
GIB = 1024**3


def cells(name: str) -> list[str]:
  """'LoRA / full' GiB per device for each mesh; each abstract state is built once."""
  full_cfg = ModelConfig.preset(name, param_dtype="float32")
  lora_cfg = ModelConfig.preset(name, param_dtype="bfloat16")
  full = abstract_train_state(full_cfg, method="full")
  lora = abstract_train_state(lora_cfg, method="lora", rank=16)
  out = []
  for shape in MESHES:
    mesh = S.make_mesh(*shape, devices=jax.devices()[: int(np.prod(shape))])
    lo = train_state_bytes(lora_cfg, mesh, state=lora)["total"] / GIB
    fu = train_state_bytes(full_cfg, mesh, state=full)["total"] / GIB
    out.append(f"{lo:.1f} / {fu:.1f}")
  return out


def main():
  header = (
    "| model | params | "
    + " | ".join(f"mesh {d}x{f}x{t} ({d * f * t} dev) LoRA / full" for d, f, t in MESHES)
    + " |"
  )
  lines = [header, "|" + "---|" * (len(MESHES) + 2)]
  from gemmax.models import param_count

  for name in sys.argv[1:] or PRESETS:
    lines.append(
      f"| {name} | {param_count(ModelConfig.preset(name)) / 1e9:.2f}B | "
      + " | ".join(cells(name))
      + " |"
    )
    print(lines[-1], flush=True)
  table = "\n".join(lines)
  print(table)
  return table


if __name__ == "__main__":
  main()
