"""Next-token cross-entropy from hidden states, computed in token chunks.

The full [batch, seq, vocab] logits are never built: tokens are processed `chunk` at a time
(a `lax.scan`), and the chunk function is wrapped in `jax.checkpoint` so the backward pass
recomputes each chunk's logits instead of storing them. When all tokens fit in one chunk the
scan and the recompute are skipped (the logits are then at most one chunk's budget). Everything
after the matmul is float32.

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

from gemmax.models.layers import contract_tokens, dot2d
from gemmax.ops.common import index_equals

# Default number of float32 logits per chunk (2**24 = 64 MiB): the chunk length in tokens is
# this budget divided by the vocabulary size, so memory stays flat as the vocabulary grows.
DEFAULT_LOGIT_BUDGET = 2 ** 24


class CESums(NamedTuple):
  """Sums over masked tokens: cross-entropy, correct top-1 predictions (the target logit is the
  maximum; a tie counts as correct), and token count."""
  loss_sum: jax.Array
  correct: jax.Array
  count: jax.Array


def _softcap(x, cap):
  return x if cap is None else jnp.tanh(x / cap) * cap


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunk_ce(w, h, y, m, softcap, vocab_major):
  """(sum of masked CE, masked count of correct top-1) for one chunk: h [c, D], y, m [c]."""
  return _chunk_ce_fwd(w, h, y, m, softcap, vocab_major)[0]


def _chunk_ce_fwd(w, h, y, m, softcap, vocab_major):
  logits = _softcap(dot2d(h, w, w_t=vocab_major, preferred_element_type=jnp.float32),
                    softcap)  # [c, V]
  # One max serves the logsumexp and the accuracy: top-1 is correct when the target's logit is
  # the maximum (argmax, a variadic reduce, took longer on XLA:CPU than the whole matmul).
  mx = jnp.max(logits, axis=-1)
  lse = mx + jnp.log(jnp.sum(jnp.exp(logits - mx[:, None]), axis=-1))
  target_logit = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  sums = (jnp.sum((lse - target_logit) * m), jnp.sum((target_logit >= mx) * m))
  return sums, (w, h, y, m, logits, lse)


def _chunk_ce_bwd(softcap, vocab_major, res, g):
  """d CE / d logits = (softmax - onehot) * m, times the soft-cap's 1 - tanh^2, in one pass.

  Written out because autodiff spread it over six [c, V] float32 passes (and a scatter).
  """
  w, h, y, m, logits, lse = res
  onehot = index_equals(y, logits.shape[-1])
  d = (jnp.exp(logits - lse[:, None]) - onehot) * (m * g[0])[:, None]
  if softcap is not None:  # the capped logits are kept: t = logits / cap (one array, not two)
    t = logits / softcap
    d = d * (1.0 - t * t)
  d = d.astype(h.dtype)
  dh = dot2d(d, w, w_t=not vocab_major, preferred_element_type=jnp.float32)
  dw = contract_tokens(d, h) if vocab_major else contract_tokens(h, d)
  return dw.astype(w.dtype), dh.astype(h.dtype), None, None


_chunk_ce.defvjp(_chunk_ce_fwd, _chunk_ce_bwd)


def chunk_tokens_for(vocab_size: int, n_tokens: int, budget: int = DEFAULT_LOGIT_BUDGET) -> int:
  """Tokens per chunk so that one chunk's logits hold about `budget` floats (>= 1, <= n)."""
  return int(max(1, min(n_tokens, budget // max(1, vocab_size))))


def cross_entropy_sums(hidden: jax.Array, weight: jax.Array, targets: jax.Array,
                       loss_mask: jax.Array, *, softcap: Optional[float] = None,
                       chunk: Optional[int] = None, vocab_major: bool = False) -> CESums:
  """Masked CE sums of `softcap(hidden @ weight)` against `targets`, chunked over tokens.

  hidden: [B, T, D] (any float dtype; the matmul accumulates in float32); weight: [D, V], or
  [V, D] with `vocab_major` (a tied embedding table as stored); targets: [B, T] int next-token
  ids; loss_mask: [B, T] (1 where the token is scored). `chunk` is the number of tokens per
  chunk (default from DEFAULT_LOGIT_BUDGET).
  """
  b, t, d = hidden.shape
  if weight.ndim != 2 or weight.shape[1 if vocab_major else 0] != d:
    want = f"[vocab, hidden={d}]" if vocab_major else f"[hidden={d}, vocab]"
    raise ValueError(f"output weight must be {want}; got {weight.shape}")
  if targets.shape != (b, t) or loss_mask.shape != (b, t):
    raise ValueError(f"targets {targets.shape} and loss_mask {loss_mask.shape} must be [{b}, {t}]")
  n = b * t
  chunk = chunk or chunk_tokens_for(weight.shape[0 if vocab_major else 1], n)
  n_chunks = -(-n // chunk)
  pad = n_chunks * chunk - n
  h = jnp.pad(hidden.reshape(n, d), ((0, pad), (0, 0))).reshape(n_chunks, chunk, d)
  y = jnp.pad(targets.reshape(n).astype(jnp.int32), (0, pad)).reshape(n_chunks, chunk)
  m = jnp.pad(loss_mask.reshape(n).astype(jnp.float32), (0, pad)).reshape(n_chunks, chunk)
  w = weight.astype(hidden.dtype)

  def chunk_sums(w, h, y, m):
    return _chunk_ce(w, h, y, m, softcap, vocab_major)

  if n_chunks == 1:
    # Every token fits in one chunk's budget: keeping its logits for the backward costs no more
    # than the recompute would hold at once, and saves redoing the [n, D] x [D, V] matmul.
    loss_sum, correct = chunk_sums(w, h[0], y[0], m[0])
    return CESums(loss_sum, jax.lax.stop_gradient(correct), jnp.sum(m))

  # backward recomputes each chunk's logits: no [n, V] residuals are kept
  chunk_sums = jax.checkpoint(chunk_sums)

  def body(carry, xs):
    loss, correct = chunk_sums(w, *xs)
    return (carry[0] + loss, carry[1] + correct), None

  zero = jnp.zeros((), jnp.float32)
  (loss_sum, correct), _ = jax.lax.scan(body, (zero, zero), (h, y, m))
  return CESums(loss_sum, jax.lax.stop_gradient(correct), jnp.sum(m))


def cross_entropy(hidden, weight, targets, loss_mask, *, softcap=None, chunk=None):
  """Masked-mean next-token CE. Returns (loss, {"tokens": count, "accuracy": acc})."""
  s = cross_entropy_sums(hidden, weight, targets, loss_mask, softcap=softcap, chunk=chunk)
  denom = jnp.maximum(s.count, 1.0)
  return s.loss_sum / denom, {"tokens": s.count, "accuracy": s.correct / denom}


def naive_cross_entropy(hidden, weight, targets, loss_mask, *, softcap=None):
  """Dense reference (materialises [B, T, V] logits); for tests and small vocabularies."""
  logits = _softcap(jnp.einsum("btd,dv->btv", hidden, weight.astype(hidden.dtype),
                               preferred_element_type=jnp.float32), softcap)
  logp = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  m = loss_mask.astype(jnp.float32)
  count = jnp.sum(m)
  acc = jnp.sum((jnp.argmax(logits, -1) == targets) * m) / jnp.maximum(count, 1.0)
  return jnp.sum(ce * m) / jnp.maximum(count, 1.0), {"tokens": count, "accuracy": acc}


def model_loss_sums(model, batch, *, chunk=None) -> CESums:
  """Run `model` on a batch dict (input_ids, targets, loss_mask, positions, segment_ids)."""
  h = model.hidden_states(batch["input_ids"], positions=batch.get("positions"),
                          segment_ids=batch.get("segment_ids"))
  cfg = model.config
  cap = cfg.final_logit_softcapping if cfg.family == "gemma2" else None
  w, vocab_major = model.output_projection()
  return cross_entropy_sums(h, w, batch["targets"], batch["loss_mask"], softcap=cap, chunk=chunk,
                            vocab_major=vocab_major)
