"""Next-token cross-entropy from hidden states, computed in chunks of the scored tokens.

The full [batch, seq, vocab] logits are never built: the scored tokens (loss_mask != 0) are
gathered `chunk` at a time in a loop that runs only as many chunks as there are scored tokens, so
a fine-tuning batch that scores its responses pays no logits for its prompts (at a 49k
vocabulary the output projection is a fifth of a small model's FLOPs per token). Under autodiff
each chunk forms its gradient in the same pass as its loss (the logits are never stored or
recomputed). Everything after the matmul is float32.

Loss convention: masked mean = sum over tokens of (CE * loss_mask) / sum(loss_mask), i.e. every
response token counts the same whatever example it belongs to. With gradient accumulation the
step sums CE and token counts over micro-batches and divides once, so accumulation gives the
same loss as one big batch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from gemmax.errors import GemmaxError
from gemmax.models.head import Head, chunk_tokens_for, scan_logits
from gemmax.models.head import softcap as _softcap
from gemmax.ops.matmul import contract_tokens, dot2d
from gemmax.ops.common import index_equals


class CESums(NamedTuple):
  """Sums over masked tokens: cross-entropy, correct top-1 predictions (the target logit is the
  maximum; a tie counts as correct), and token count."""

  loss_sum: jax.Array
  correct: jax.Array
  count: jax.Array


def _ce_terms(logits, x):
  """A chunk's (mask (0 on padding), max, logsumexp, target logit) from its capped logits."""
  mc = jnp.where(x["valid"], x["m"], 0.0)
  # One max serves the logsumexp and the accuracy: top-1 is correct when the target's logit is
  # the maximum (argmax, a variadic reduce, took longer on XLA:CPU than the whole matmul).
  mx = jnp.max(logits, axis=-1)
  lse = mx + jnp.log(jnp.sum(jnp.exp(logits - mx[:, None]), axis=-1))
  tl = jnp.take_along_axis(logits, x["y"][:, None], axis=-1)[:, 0]
  return mc, mx, lse, tl


def _sums(mc, mx, lse, tl):
  return jnp.sum((lse - tl) * mc), jnp.sum((tl >= mx) * mc)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _scored_ce(w, h, y, m, chunk, softcap, vocab_major):
  """(sum of masked CE, masked count of correct top-1) over h [n, D], y, m [n]: a loop over
  chunks of the scored tokens only, so unscored positions cost no logits at all."""

  def fn(acc, logits, x):
    return jax.tree.map(jnp.add, acc, _sums(*_ce_terms(logits, x))), None

  zero = jnp.zeros((), jnp.float32)
  head = Head(w, vocab_major, softcap)
  return scan_logits(fn, (zero, zero), h, head, {"y": y, "m": m}, chunk=chunk, scored=m)[0]


def _scored_ce_fwd(w, h, y, m, chunk, softcap, vocab_major):
  """The gradient is formed in the forward pass, chunk by chunk: d CE / d logits =
  (softmax - onehot) * m (times the soft-cap's 1 - tanh^2), then dh = d @ w^T and dw = h^T d.
  Nothing [tokens, vocab] is kept and no logits are recomputed (the checkpointed chunks of a
  backward pass computed them twice), and dw only when w is trained."""
  w_in, h_in = w, h
  w, h, y, m = w.value, h.value, y.value, m.value
  want_w = w_in.perturbed

  def fn(acc, logits, x):
    sums, dh, dw = acc
    mc, mx, lse, tl = _ce_terms(logits, x)
    d = (jnp.exp(logits - lse[:, None]) - index_equals(x["y"], logits.shape[-1])) * mc[:, None]
    if softcap is not None:  # the capped logits are kept: t = logits / cap (one array, not two)
      t = logits / softcap
      d = d * (1.0 - t * t)
    d = d.astype(h.dtype)
    if h_in.perturbed:
      dh = dh.at[x["rows"]].add(
        dot2d(d, w, w_t=not vocab_major, preferred_element_type=jnp.float32)
      )
    if want_w:
      dw = dw + (contract_tokens(d, x["h"]) if vocab_major else contract_tokens(x["h"], d))
    return (jax.tree.map(jnp.add, sums, _sums(mc, mx, lse, tl)), dh, dw), None

  zero = jnp.zeros((), jnp.float32)
  dh = jnp.zeros(h.shape if h_in.perturbed else (), jnp.float32)
  dw = jnp.zeros(w.shape if want_w else (), jnp.float32)
  init = ((zero, zero), dh, dw)
  head = Head(w, vocab_major, softcap)
  (sums, dh, dw), _ = scan_logits(fn, init, h, head, {"y": y, "m": m}, chunk=chunk, scored=m)
  # (zero-size arrays carry the dtypes the cotangents must have)
  dtypes = jnp.zeros((0,), w.dtype), jnp.zeros((0,), h.dtype)
  return sums, (dw if want_w else None, dh if h_in.perturbed else None, dtypes)


def _scored_ce_bwd(chunk, softcap, vocab_major, res, g):
  dw, dh, (w_dt, h_dt) = res
  g = g[0]  # the count of correct predictions carries no gradient
  scale = lambda x, like: None if x is None else (x * g).astype(like.dtype)
  return scale(dw, w_dt), scale(dh, h_dt), None, None


_scored_ce.defvjp(_scored_ce_fwd, _scored_ce_bwd, symbolic_zeros=True)


def cross_entropy_sums(
  hidden: jax.Array,
  weight: jax.Array,
  targets: jax.Array,
  loss_mask: jax.Array,
  *,
  softcap: Optional[float] = None,
  chunk: Optional[int] = None,
  vocab_major: bool = False,
) -> CESums:
  """Masked CE sums of `softcap(hidden @ weight)` against `targets`, chunked over the scored
  tokens (loss_mask != 0) only: fine-tuning scores responses, so most positions need no logits.

  hidden: [B, T, D] (any float dtype; the matmul accumulates in float32); weight: [D, V], or
  [V, D] with `vocab_major` (a tied embedding table as stored); targets: [B, T] int next-token
  ids; loss_mask: [B, T] (1 where the token is scored; other values weight it). `chunk` is the
  number of tokens per chunk (default: gemmax.models.head's logit budget).
  """
  b, t, d = hidden.shape
  if weight.ndim != 2 or weight.shape[1 if vocab_major else 0] != d:
    want = f"[vocab, hidden={d}]" if vocab_major else f"[hidden={d}, vocab]"
    raise GemmaxError(f"output weight must be {want}; got {weight.shape}")
  if targets.shape != (b, t) or loss_mask.shape != (b, t):
    raise GemmaxError(f"targets {targets.shape} and loss_mask {loss_mask.shape} must be [{b}, {t}]")
  n = b * t
  chunk = chunk or chunk_tokens_for(weight.shape[0 if vocab_major else 1], n)
  m = jnp.asarray(loss_mask).reshape(n).astype(jnp.float32)
  y = jnp.asarray(targets).reshape(n).astype(jnp.int32)
  loss_sum, correct = _scored_ce(
    weight.astype(hidden.dtype), hidden.reshape(n, d), y, m, min(chunk, n), softcap, vocab_major
  )
  return CESums(loss_sum, jax.lax.stop_gradient(correct), jnp.sum(m))


def cross_entropy(hidden, weight, targets, loss_mask, *, softcap=None, chunk=None):
  """Masked-mean next-token CE. Returns (loss, {"tokens": count, "accuracy": acc})."""
  s = cross_entropy_sums(hidden, weight, targets, loss_mask, softcap=softcap, chunk=chunk)
  denom = jnp.maximum(s.count, 1.0)
  return s.loss_sum / denom, {"tokens": s.count, "accuracy": s.correct / denom}


def naive_cross_entropy(hidden, weight, targets, loss_mask, *, softcap=None):
  """Dense reference (materialises [B, T, V] logits); for tests and small vocabularies."""
  logits = _softcap(
    jnp.einsum(
      "btd,dv->btv", hidden, weight.astype(hidden.dtype), preferred_element_type=jnp.float32
    ),
    softcap,
  )
  logp = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  m = loss_mask.astype(jnp.float32)
  count = jnp.sum(m)
  acc = jnp.sum((jnp.argmax(logits, -1) == targets) * m) / jnp.maximum(count, 1.0)
  return jnp.sum(ce * m) / jnp.maximum(count, 1.0), {"tokens": count, "accuracy": acc}


def model_loss_sums(model, batch, *, chunk=None) -> CESums:
  """Run `model` on a batch dict (input_ids, targets, loss_mask, positions, segment_ids)."""
  h = model.hidden_states(
    batch["input_ids"], positions=batch.get("positions"), segment_ids=batch.get("segment_ids")
  )
  w, vocab_major, cap = model.output_head()
  return cross_entropy_sums(
    h, w, batch["targets"], batch["loss_mask"], softcap=cap, chunk=chunk, vocab_major=vocab_major
  )
