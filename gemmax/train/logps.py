"""Log-probabilities of target tokens, and objectives written over them (DPO, GRPO).

`token_logps` computes log p(target) for the scored tokens through the one chunked-logits loop
(gemmax.models.head.scan_logits): only chunks holding scored tokens are visited and no
[batch, seq, vocab] array exists. It is a forward pass (no gradient).

`logp_objective` differentiates any objective f(logps) of those log-probabilities without
keeping logits either: with c = df/dlogps (cheap: [B, T] numbers), the gradient of f through the
model equals the gradient of sum_t c_t log p_t, which is a cross-entropy weighted by -c -- the
chunked CE (gemmax.train.losses) whose custom VJP forms each chunk's gradient as it goes. So a
sequence-level objective costs one more head pass than the plain loss, and its value and
gradients are exact.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from gemmax.models.head import Head, chunk_tokens_for, scan_logits
from gemmax.train.losses import cross_entropy_sums


def token_logps(
  hidden: jax.Array, head: Head, targets: jax.Array, mask: jax.Array, *, chunk=None
) -> jax.Array:
  """float32 [B, T]: log p(targets) under `head` applied to hidden [B, T, D] where mask != 0,
  0 elsewhere. No gradient flows through it."""
  b, t, d = hidden.shape
  n = b * t
  sg = jax.lax.stop_gradient
  head = Head(sg(head.weight).astype(hidden.dtype), head.vocab_major, head.softcap)
  m = mask.reshape(n)

  def fn(out, logits, x):
    lse = jax.nn.logsumexp(logits, axis=-1)
    lp = jnp.take_along_axis(logits, x["y"][:, None], axis=-1)[:, 0] - lse
    # padding rows point at token 0 with valid False: adding 0 there leaves it alone
    return out.at[x["rows"]].add(jnp.where(x["valid"], lp, 0.0)), None

  chunk = chunk or chunk_tokens_for(head.vocab_size, n)
  out, _ = scan_logits(
    fn,
    jnp.zeros((n,), jnp.float32),
    sg(hidden).reshape(n, d),
    head,
    {"y": targets.reshape(n).astype(jnp.int32)},
    chunk=chunk,
    scored=m,
  )
  return out.reshape(b, t)


def logp_objective(
  hidden: jax.Array,
  head: Head,
  targets: jax.Array,
  mask: jax.Array,
  objective: Callable,
  *,
  chunk: Optional[int] = None,
):
  """(value, aux) of `objective(logps)` -> (scalar, aux), logps = token_logps(...) [B, T], with
  gradients to `hidden` and the head's weight (see the module docstring). Tokens with mask == 0
  get no gradient, whatever the objective does with their (zero) entries."""
  logps = token_logps(hidden, head, targets, mask, chunk=chunk)
  (value, aux), coef = jax.value_and_grad(objective, has_aux=True)(logps)
  weights = jnp.where(mask != 0, -coef, 0.0)
  s = cross_entropy_sums(
    hidden,
    head.weight,
    targets,
    weights,
    softcap=head.softcap,
    chunk=chunk,
    vocab_major=head.vocab_major,
  )
  # s.loss_sum = sum_t c_t log p_t: its value is replaced, its gradient is the objective's
  return value + s.loss_sum - jax.lax.stop_gradient(s.loss_sum), aux


def sequence_logps(logps: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, T] token log-probs -> [B] sums over the scored tokens."""
  return jnp.sum(logps * (mask != 0), axis=-1)
