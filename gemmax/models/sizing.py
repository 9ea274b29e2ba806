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
