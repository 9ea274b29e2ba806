"""Memory a fine-tune keeps resident per device (frozen base, trainable parameters, AdamW's m and
v), computed from abstract states: nothing is allocated, so any preset and mesh can be sized."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from gemmax import peft, sharding
from gemmax.models.config import ModelConfig
from gemmax.models.transformer import Transformer


def abstract_train_state(
  config: ModelConfig, *, method: str = "lora", rank: int = 16, targets="all-linear"
) -> tuple:
  """(frozen, trainable) nnx.States of ShapeDtypeStructs for a fine-tune (nothing allocated).

  method "full": every parameter trainable (frozen is None); "lora"/"dora": the base frozen in
  its param_dtype, the float32 adapters trainable.
  """

  def build():
    model = Transformer(config, rngs=nnx.Rngs(0))
    if method != "full":
      peft.apply(model, method=method, rank=rank, alpha=2 * rank, targets=targets)
    return model

  model = nnx.eval_shape(build)
  if method == "full":
    return None, nnx.state(model, nnx.Param)
  keep = peft.trainable_filter(model)
  return nnx.state(model, nnx.All(nnx.Param, nnx.Not(keep))), nnx.state(model, keep)


def state_bytes(state, mesh=None, dtype=None) -> int:
  """Bytes of `state` on one device: each tensor's shard under gemmax.sharding's default rules
  over `mesh` (whole tensors without one). `dtype` overrides the itemsize (e.g. Adam's f32)."""
  if state is None:
    return 0
  leaves = jax.tree.leaves(state)
  shards = (
    jax.tree.leaves(sharding.model_shardings(state, mesh, lenient=True))
    if mesh is not None
    else [None] * len(leaves)
  )
  total = 0
  for x, sh in zip(leaves, shards):
    shape = sh.shard_shape(x.shape) if sh is not None else x.shape
    total += int(np.prod(shape)) * np.dtype(dtype or x.dtype).itemsize
  return total


def train_state_bytes(
  config: ModelConfig,
  mesh=None,
  *,
  method: str = "lora",
  rank: int = 16,
  targets="all-linear",
  state=None,
) -> dict:
  """Bytes per device of what a fine-tune keeps resident: the frozen base, the trainable
  parameters and AdamW's m and v (float32). Not included: gradients (one more copy of the
  trainable shards, transient), activations, XLA workspace. `state`: a precomputed
  abstract_train_state(...) to reuse across meshes. Returns {"frozen", "trainable",
  "optimizer", "total"} in bytes.
  """
  frozen, trainable = state or abstract_train_state(
    config, method=method, rank=rank, targets=targets
  )
  out = {
    "frozen": state_bytes(frozen, mesh),
    "trainable": state_bytes(trainable, mesh),
    "optimizer": 2 * state_bytes(trainable, mesh, np.float32),
  }
  out["total"] = sum(out.values())
  return out
