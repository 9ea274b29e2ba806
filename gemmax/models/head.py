"""The output head as data, and the one loop that computes logits chunk by chunk.

`Transformer.output_head()` returns a `Head` (weight as stored, its layout, the final soft-cap).
Everything that needs logits for many tokens -- the loss (train/losses.py), sequence
log-probabilities (train/logps.py), distillation (distill/chunked.py) and the teacher's top-k
(distill/teacher.py) -- walks the tokens with `scan_logits`, so the [tokens, vocab] array never
exists and a change of head (layout, soft-cap, dtype) lands here only.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gemmax.ops.matmul import dot2d

# Default number of float32 logits per chunk (2**24 = 64 MiB): the chunk length in tokens is
# this budget divided by the vocabulary size, so memory stays flat as the vocabulary grows.
DEFAULT_LOGIT_BUDGET = 2**24


def softcap(x: jax.Array, cap: Optional[float]) -> jax.Array:
  """tanh(x / cap) * cap, or x when cap is None."""
  return x if cap is None else jnp.tanh(x / cap) * cap


def head_logits(h: jax.Array, w: jax.Array, *, vocab_major: bool, cap: Optional[float]):
  """h [c, D] and the head as stored (w [V, D] when vocab_major, else [D, V]) -> float32
  [c, V] logits, soft-capped by `cap`."""
  return softcap(dot2d(h, w, w_t=vocab_major, preferred_element_type=jnp.float32), cap)


class Head(NamedTuple):
  """The output projection as stored ([V, D] when vocab_major, e.g. a tied embedding table;
  else [D, V]) and the final soft-cap (None: none)."""

  weight: jax.Array
  vocab_major: bool
  softcap: Optional[float]

  @property
  def vocab_size(self) -> int:
    return self.weight.shape[0 if self.vocab_major else 1]

  def logits(self, h: jax.Array) -> jax.Array:
    """h [c, D] -> float32 [c, V] logits (the weight is cast to h's dtype)."""
    w = self.weight.astype(h.dtype)
    return head_logits(h, w, vocab_major=self.vocab_major, cap=self.softcap)


def chunk_tokens_for(vocab_size: int, n_tokens: int, budget: int = DEFAULT_LOGIT_BUDGET) -> int:
  """Tokens per chunk so that one chunk's logits hold about `budget` floats (>= 1, <= n)."""
  return int(max(1, min(n_tokens, budget // max(1, vocab_size))))


def token_chunks(x: jax.Array, n_chunks: int, chunk: int, fill=0) -> jax.Array:
  """[n, ...] -> [n_chunks, chunk, ...]: the n tokens in order, padded with `fill`."""
  pad = n_chunks * chunk - x.shape[0]
  x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1), constant_values=fill)
  return x.reshape(n_chunks, chunk, *x.shape[1:])


def scan_logits(
  fn: Callable,
  init,
  hidden: jax.Array,
  head: Head,
  xs: Optional[dict] = None,
  *,
  chunk: int,
  scored: Optional[jax.Array] = None,
  remat: bool = False,
):
  """Walk the tokens of hidden [n, D] `chunk` at a time with their float32 logits [chunk, V].

  fn(carry, logits, x) -> (carry, y), where x holds the chunk's rows of every `xs` entry
  ([n, ...] arrays) and "h" (hidden rows [chunk, D]), "rows" (token indices) and "valid"
  (False on the padding that fills the last chunk). Returns (carry, ys).

  scored None: every token, chunks in order, through `lax.scan` (differentiable; ys come back
  [n, ...]). `remat` recomputes each chunk's logits in the backward pass instead of keeping
  them; a single chunk is never recomputed (keeping it costs no more than recomputing would).
  scored [n]: only the tokens with scored != 0, gathered in order, and only as many chunks as
  hold them -- a trip count known at run time, so the loop is not reverse-differentiable (use it
  in forward passes and custom VJPs) and fn's y must be None.
  """
  n = hidden.shape[0]
  chunk = max(1, min(chunk, n))
  xs = {k: jnp.asarray(v) for k, v in dict(xs or {}, h=hidden).items()}
  n_chunks = -(-n // chunk)
  if scored is None:
    body = lambda carry, x: fn(carry, head.logits(x["h"]), x)  # noqa: E731
    if remat and n_chunks > 1:
      body = jax.checkpoint(body)
    chunked = {k: token_chunks(v, n_chunks, chunk) for k, v in xs.items()}
    chunked["rows"] = jnp.arange(n_chunks * chunk, dtype=jnp.int32).reshape(n_chunks, chunk)
    chunked["valid"] = chunked["rows"] < n
    if n_chunks == 1:
      carry, y = body(init, jax.tree.map(lambda v: v[0], chunked))
      ys = jax.tree.map(lambda v: v[None], y)
    else:
      carry, ys = jax.lax.scan(body, init, chunked)
    return carry, jax.tree.map(lambda v: v.reshape(n_chunks * chunk, *v.shape[2:])[:n], ys)

  keep = scored != 0
  rows = jnp.nonzero(keep, size=n_chunks * chunk, fill_value=0)[0].astype(jnp.int32)
  count = jnp.sum(keep, dtype=jnp.int32)

  def step(j, carry):
    r = jax.lax.dynamic_slice_in_dim(rows, j * chunk, chunk)
    x = {k: v[r] for k, v in xs.items() if k != "h"}  # r is in bounds (nonzero's rows, or 0)
    x.update(h=jnp.take(hidden, r, axis=0), rows=r, valid=j * chunk + jnp.arange(chunk) < count)
    carry, y = fn(carry, head.logits(x["h"]), x)
    if y is not None:
      raise ValueError("scan_logits over scored tokens: fn must return y = None")
    return carry

  if n_chunks == 1:
    return step(0, init), None
  return jax.lax.fori_loop(0, (count + chunk - 1) // chunk, step, init), None
