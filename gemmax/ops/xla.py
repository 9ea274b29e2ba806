"""Reference attention in plain XLA: grouped dot_generals (GQA as a reshape), f32 softmax."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gemmax.ops.common import is_low_precision, split_segments

_F32 = jnp.float32


def visibility_mask(q_pos, k_pos, *, causal, sliding_window, q_seg=None, k_seg=None):
  """Boolean [..., T, S] mask: key k visible to query q.

  Window W keeps keys with `q - W < k <= q` (W keys including q itself). NumPy positions give a
  NumPy mask (a constant under jit) unless segments are given.
  """
  q = q_pos[..., :, None]
  k = k_pos[..., None, :]
  terms = [k <= q] if causal else []
  if sliding_window is not None:
    terms.append(k > q - sliding_window)
  if q_seg is not None:
    terms.append(q_seg[..., :, None] == k_seg[..., None, :])
  mask = np.ones(np.broadcast_shapes(q.shape, k.shape), dtype=bool)
  for term in terms:
    mask = term & mask  # a jax term on the left keeps the result a jax array
  return mask


# Up to this many [T, S] entries, default positions give the mask as a constant: XLA:CPU
# recomputes an iota per element inside a fused loop, and the softmax passes of a global layer ran
# 25% slower with one (attention forward + backward, bf16, 256 tokens: 8.2 -> 6.5 ms).
STATIC_MASK_MAX = 1 << 22


# The products take q as [B, T, K, G, H] and k, v as [B, S, K, H] as they are, never through an
# explicit transpose: XLA:CPU treats a dot fed by a transpose as unsupported by its matmul
# library and upcasts bf16 operands to f32 (2x slower here), while the dimension numbers below
# let XLA canonicalise the layouts itself. Logits come out [B, K, T, G, S]: (T, G) is one query
# axis per kv head, so no [B, K, G, T, S] transposes appear around the softmax either.
def _dot(a, b, contract, batch):
  return jax.lax.dot_general(a, b, (contract, batch), preferred_element_type=_F32)


def _masked_logits(q5, k, mask, scale, softcap):
  """f32 logits [B, K, T, G, S]: scaled, soft-capped (the cap comes before the mask), masked."""
  logits = _dot(q5, k, ((4,), (3,)), ((0, 2), (0, 2))) * scale
  if softcap is not None:
    logits = jnp.tanh(logits / softcap) * softcap
  return jnp.where(mask, logits, jnp.finfo(_F32).min)


def _probs(q5, k, mask, scale, softcap):
  """f32 probabilities [B, K, T, G, S]."""
  probs = jax.nn.softmax(_masked_logits(q5, k, mask, scale, softcap), axis=-1)
  # A query with no visible key (fully padded row) gets zeros, not a uniform average.
  return jnp.where(mask.any(-1, keepdims=True), probs, 0.0)


def _mix_values(probs, v, out_dtype):
  """probs [B, K, T, G, S] @ v [B, S, K, H] -> [B, T, K, G, H] in `out_dtype`."""
  out = _dot(probs.astype(v.dtype), v, ((4,), (1,)), ((0, 1), (0, 2)))  # [B, K, T, G, H]
  return out.transpose(0, 2, 1, 3, 4).astype(out_dtype)


def _attend(q5, k, v, mask, scale, softcap):
  """[B, T, K, G, H] output in q's dtype."""
  return _mix_values(_probs(q5, k, mask, scale, softcap), v, q5.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attend_low_precision(q5, k, v, mask, scale, softcap):
  """`_attend` for bf16/f16 inputs, written out forward and backward (flash-attention style).

  Why: autodiff gives the backward products an f32 operand (the logits' gradient) and a bf16 one,
  which XLA:CPU runs in f32. Here dS is rounded to the inputs' dtype, as flash attention and
  torch's bf16 attention do, so all four gradient products are bf16 x bf16 -> f32. The softmax is
  kept as the masked logits and their logsumexp: the backward recomputes P from them in the same
  pass that forms dS, and the softmax's row term sum(dP * P) is taken as sum(dO * O) over the
  head dim: no f32 probabilities or soft-cap tanh are stored, and the backward's row term reduces
  over H, not S.
  """
  return _attend_fwd(q5, k, v, mask, scale, softcap)[0]


_NO_SHIFT_CAP = 64.0  # e^64 * 2^24 keys is far below float32's max (e^88.7)


def _attend_fwd(q5, k, v, mask, scale, softcap):
  logits = _masked_logits(q5, k, mask, scale, softcap)
  if softcap is not None and softcap <= _NO_SHIFT_CAP:
    # |logits| <= cap: exp cannot overflow, so no max pass is needed (masked ones give 0).
    lse = jnp.log(jnp.sum(jnp.exp(logits), axis=-1, keepdims=True))
  else:
    mx = jnp.max(logits, axis=-1, keepdims=True)
    lse = mx + jnp.log(jnp.sum(jnp.exp(logits - mx), axis=-1, keepdims=True))
  # A query with no visible key gets P = exp(-inf) = 0: zeros, not a uniform average.
  lse = jnp.where(mask.any(-1, keepdims=True), lse, jnp.inf)
  probs = jnp.exp(logits - lse).astype(v.dtype)
  out = _mix_values(probs, v, q5.dtype)
  return out, (q5, k, v, logits, lse, probs, out)


def _attend_bwd(scale, softcap, res, d_out):
  # The barrier keeps XLA from merging the backward's exp(logits - lse) with the forward's
  # (CSE), which would store P in float32 after all.
  q5, k, v, logits, lse, probs, out, d_out = jax.lax.optimization_barrier((*res, d_out))
  dt = q5.dtype
  d_out = d_out.astype(dt)  # [B, T, K, G, H]
  dv = _dot(probs, d_out, ((2, 3), (1, 3)), ((0, 1), (0, 2)))  # [B, K, S, H]
  dp = _dot(d_out, v, ((4,), (3,)), ((0, 2), (0, 2)))  # [B, K, T, G, S]
  row = jnp.sum(d_out.astype(_F32) * out.astype(_F32), axis=-1)  # = sum_S dP * P, [B, T, K, G]
  ds = jnp.exp(logits - lse) * (dp - row.transpose(0, 2, 1, 3)[..., None])  # masked P are 0
  if softcap is not None:  # tanh' = 1 - t^2; masked logits clip to t = -1 (their P is 0)
    t = jnp.maximum(logits / softcap, -1.0)
    ds = ds * (1.0 - t * t)
  ds = (ds * scale).astype(dt)
  dq = _dot(ds, k, ((4,), (1,)), ((0, 1), (0, 2)))  # [B, K, T, G, H]
  dk = _dot(ds, q5, ((2, 3), (1, 3)), ((0, 1), (0, 2)))  # [B, K, S, H]
  return (
    dq.transpose(0, 2, 1, 3, 4).astype(dt),
    dk.transpose(0, 2, 1, 3).astype(k.dtype),
    dv.transpose(0, 2, 1, 3).astype(v.dtype),
    None,
  )  # None: the mask has no gradient


_attend_low_precision.defvjp(_attend_fwd, _attend_bwd)


def attention_xla(
  q,
  k,
  v,
  *,
  scale,
  causal,
  sliding_window,
  softcap,
  segment_ids,
  q_positions=None,
  kv_positions=None,
):
  """q: [B, T, N, H]; k, v: [B, S, K, H] with N = K * G. Returns [B, T, N, H] in q.dtype."""
  b, t, n, h = q.shape
  s, kh = k.shape[1], k.shape[2]
  xp = np if q_positions is None and kv_positions is None and t * s <= STATIC_MASK_MAX else jnp
  if q_positions is None:
    q_positions = xp.arange(t)[None] + (s - t)  # queries are the last t keys
  if kv_positions is None:
    kv_positions = xp.arange(s)[None]
  q_seg, k_seg = split_segments(segment_ids)
  mask = visibility_mask(
    q_positions,
    kv_positions,
    causal=causal,
    sliding_window=sliding_window,
    q_seg=q_seg,
    k_seg=k_seg,
  )[:, None, :, None, :]  # [B or 1, 1, T, 1, S]
  attend = _attend_low_precision if is_low_precision(q, k, v) else _attend
  out = attend(q.reshape(b, t, kh, n // kh, h), k, v, mask, float(scale), softcap)
  return out.reshape(b, t, n, h)
