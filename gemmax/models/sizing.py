"""Sizes without memory: abstract models via eval_shape, parameter counts, analytic FLOPs."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from gemmax.models.config import ModelConfig


def abstract_model(config: ModelConfig):
  """The model with ShapeDtypeStructs instead of arrays (nothing is allocated)."""
  from gemmax.models.transformer import Transformer

  return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))


def param_count(config_or_model) -> int:
  """Number of parameters; from a config this uses `jax.eval_shape`, allocating nothing."""
  model = (
    abstract_model(config_or_model) if isinstance(config_or_model, ModelConfig) else config_or_model
  )
  state = nnx.state(model, nnx.Param)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))


def analytic_flops(config: ModelConfig, batch: int, seq: int, *, backward: bool = True) -> float:
  """FLOPs of one forward (x3 with backward) counting every matmul, attention as dense T x T.

  Dense attention is what the XLA reference computes; kernels that skip masked blocks do less.
  """
  c = config
  tokens = batch * seq
  attn_proj = c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
  mlp = 3 * c.hidden_size * c.intermediate_size
  per_layer = (
    2 * tokens * (attn_proj + mlp) + 4 * batch * seq * seq * c.num_attention_heads * c.head_dim
  )
  logits = 2 * tokens * c.hidden_size * c.vocab_size
  fwd = c.num_hidden_layers * per_layer + logits
  return float(fwd * (3 if backward else 1))


def abstract_train_state(
  config: ModelConfig, *, method: str = "lora", rank: int = 16, targets="all-linear"
) -> tuple:
  """(frozen, trainable) nnx.States of ShapeDtypeStructs for a fine-tune (nothing allocated).

  method "full": every parameter trainable (frozen is None); "lora"/"dora": the base frozen in
  its param_dtype, the float32 adapters trainable.
  """

  def build():
    from gemmax.models.transformer import Transformer

    model = Transformer(config, rngs=nnx.Rngs(0))
    if method != "full":
      from gemmax import peft

      peft.apply(model, method=method, rank=rank, alpha=2 * rank, targets=targets)
    return model

  model = nnx.eval_shape(build)
  if method == "full":
    return None, nnx.state(model, nnx.Param)
  from gemmax.peft import trainable_filter

  keep = trainable_filter(model)
  return nnx.state(model, nnx.All(nnx.Param, nnx.Not(keep))), nnx.state(model, keep)


def state_bytes(state, mesh=None, dtype=None) -> int:
  """Bytes of `state` on one device: each tensor's shard under gemmax.sharding's default rules
  over `mesh` (whole tensors without one). `dtype` overrides the itemsize (e.g. Adam's f32)."""
  if state is None:
    return 0
  from gemmax import sharding

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
