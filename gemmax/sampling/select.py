"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = -1e30  # finite "minus infinity" so masked rows never turn into NaN


def choose(logits, rng, *, greedy: bool, temperature, top_k, top_p):
  """logits: f32 [B, V] -> (tokens [B] int32, logprobs [B] f32).

  logprobs are log-softmax of the model's raw logits at the chosen token (before temperature or
  truncation), the quantity HF reports as `logits` and the one scores are compared on.
  """
  logits = logits.astype(jnp.float32)
  if greedy:
    tok = jnp.argmax(logits, axis=-1)
  else:
    z = logits / jnp.maximum(temperature, 1e-6)
    if top_k is not None:
      kth = jax.lax.top_k(z, top_k)[0][:, -1:]
      z = jnp.where(z < kth, _NEG, z)
    if top_p is not None:
      z = _nucleus(z, top_p)
    tok = jax.random.categorical(rng, z, axis=-1)
  tok = tok.astype(jnp.int32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return tok, jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]


def _nucleus(z, top_p):
  """Keeps the smallest set of most likely tokens whose probability reaches top_p."""
  sorted_z = jnp.sort(z, axis=-1)[:, ::-1]
  probs = jax.nn.softmax(sorted_z, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
  keep = before < top_p  # the most likely token is always kept
  cutoff = jnp.min(jnp.where(keep, sorted_z, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(z < cutoff, _NEG, z)
