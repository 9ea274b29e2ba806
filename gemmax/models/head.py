"""The output head as a function: final hidden states -> float32 logits (soft-capped when the
model has a final soft-cap), and the token chunks every chunked-logits loop walks.

The loss (train/losses.py), distillation (distill/chunked.py, distill/teacher.py) and the model's
own `Transformer.logits` all take the head from `Transformer.output_head()` and compute a chunk's
logits here, so a change of head (layout, soft-cap, dtype) lands in one place.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from gemmax.ops.matmul import dot2d


def softcap(x: jax.Array, cap: Optional[float]) -> jax.Array:
  """tanh(x / cap) * cap, or x when cap is None."""
  return x if cap is None else jnp.tanh(x / cap) * cap


def head_logits(h: jax.Array, w: jax.Array, *, vocab_major: bool, cap: Optional[float]):
  """h [c, D] and the head as stored (w [V, D] when vocab_major, else [D, V]) -> float32
  [c, V] logits, soft-capped by `cap`."""
  return softcap(dot2d(h, w, w_t=vocab_major, preferred_element_type=jnp.float32), cap)


def token_chunks(x: jax.Array, n_chunks: int, chunk: int, fill=0) -> jax.Array:
  """[B, T, ...] -> [n_chunks, chunk, ...]: the B*T tokens in order, padded with `fill`."""
  flat = x.reshape(-1, *x.shape[2:])
  pad = n_chunks * chunk - flat.shape[0]
  flat = jnp.pad(flat, ((0, pad),) + ((0, 0),) * (flat.ndim - 1), constant_values=fill)
  return flat.reshape(n_chunks, chunk, *flat.shape[1:])
