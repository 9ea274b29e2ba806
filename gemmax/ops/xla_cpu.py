"""Attention for XLA:CPU (impl "xla_cpu", what "auto" picks on CPU for short sequences): the
computation of gemmax.ops.xla with two measured speed-ups.

- Default positions give the mask as a NumPy constant (up to STATIC_MASK_MAX entries): XLA:CPU
  recomputes an iota per element inside a fused loop, and the softmax passes of a global layer ran
  25% slower with one (attention forward + backward, bf16, 256 tokens: 8.2 -> 6.5 ms).
- bf16/f16 inputs take a hand-written backward (flash-attention style, `_attend_low_precision`):
  autodiff gives the backward products an f32 operand (the logits' gradient) and a bf16 one,
  which XLA:CPU runs in f32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gemmax.ops.common import is_low_precision
from gemmax.ops.xla import attend, dot, grouped, grouped_mask, masked_logits, mix_values

# Up to this many [T, S] entries, default positions give the mask as a constant.
STATIC_MASK_MAX = 1 << 22


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attend_low_precision(q5, k, v, mask, scale, softcap):
  """`attend` for bf16/f16 inputs, written out forward and backward (flash-attention style).

  dS is rounded to the inputs' dtype, as flash attention and torch's bf16 attention do, so all
  four gradient products are bf16 x bf16 -> f32. The backward forms dS from P as the forward
  rounded it for the value product (torch's bf16 attention keeps its softmax output the same
  way): no float32 logits are stored and no exp is recomputed. Measured on SmolLM2-135M's
  attention (bf16, 8 x 256 packed tokens, query blocks, forward + backward): 12.4-13.9 -> 11.4-11.8
  ms, 14 MB less kept per layer, and the gradients' error against float32 attention no larger.
  With a soft-cap the capped logits are kept as well, for tanh'. The softmax's row term
  sum(dP * P) is taken as sum(dO * O) over the head dim, so it reduces over H, not S.
  dV and dK are formed transposed, [B, K, H, S] = dO^T P and q^T dS: P and dS then enter as the
  right operand in the layout the forward gave them, and XLA:CPU copies only the small dO and q
  into place, where [S, H] = P^T dO copied all of P and dS (SmolLM2-135M's attention, bf16, 8 x
  256 packed, forward + backward, alternating in one process: 35-38 -> 28 ms; values identical).
  """
  return _attend_fwd(q5, k, v, mask, scale, softcap)[0]


_NO_SHIFT_CAP = 64.0  # e^64 * 2^24 keys is far below float32's max (e^88.7)


def _attend_fwd(q5, k, v, mask, scale, softcap):
  logits = masked_logits(q5, k, mask, scale, softcap)
  if softcap is not None and softcap <= _NO_SHIFT_CAP:
    # |logits| <= cap: exp cannot overflow, so no max pass is needed (masked ones give 0).
    lse = jnp.log(jnp.sum(jnp.exp(logits), axis=-1, keepdims=True))
  else:
    mx = jnp.max(logits, axis=-1, keepdims=True)
    lse = mx + jnp.log(jnp.sum(jnp.exp(logits - mx), axis=-1, keepdims=True))
  # A query with no visible key gets P = exp(-inf) = 0: zeros, not a uniform average.
  lse = jnp.where(mask.any(-1, keepdims=True), lse, jnp.inf)
  probs = jnp.exp(logits - lse).astype(v.dtype)
  out = mix_values(probs, v, q5.dtype)
  return out, (q5, k, v, None if softcap is None else logits, probs, out)


def _attend_bwd(scale, softcap, res, d_out):
  q5, k, v, logits, probs, out = res
  dt = q5.dtype
  d_out = d_out.astype(dt)  # [B, T, K, G, H]
  dv = dot(d_out, probs, ((1, 3), (2, 3)), ((0, 2), (0, 1)))  # [B, K, H, S]
  dp = dot(d_out, v, ((4,), (3,)), ((0, 2), (0, 2)))  # [B, K, T, G, S]
  row = jnp.sum(
    d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1
  )  # = sum_S dP * P, [B, T, K, G]
  ds = probs.astype(jnp.float32) * (dp - row.transpose(0, 2, 1, 3)[..., None])  # masked P: 0
  if softcap is not None:  # tanh' = 1 - t^2; masked logits clip to t = -1 (their P is 0)
    t = jnp.maximum(logits / softcap, -1.0)
    ds = ds * (1.0 - t * t)
  ds = (ds * scale).astype(dt)
  dq = dot(ds, k, ((4,), (1,)), ((0, 1), (0, 2)))  # [B, K, T, G, H]
  dk = dot(q5, ds, ((1, 3), (2, 3)), ((0, 2), (0, 1)))  # [B, K, H, S]
  return (
    dq.transpose(0, 2, 1, 3, 4).astype(dt),
    dk.transpose(0, 3, 1, 2).astype(k.dtype),
    dv.transpose(0, 3, 1, 2).astype(v.dtype),
    None,
  )  # None: the mask has no gradient


_attend_low_precision.defvjp(_attend_fwd, _attend_bwd)


def attention_xla_cpu(q, k, v, *, scale, softcap, **mask):
  """`gemmax.ops.xla.attention_xla` (same arguments, same values) with the speed-ups above."""
  t, s = q.shape[1], k.shape[1]
  positions = mask.get("q_positions") is not None or mask.get("kv_positions") is not None
  mask = grouped_mask(t, s, xp=jnp if positions or t * s > STATIC_MASK_MAX else np, **mask)
  fn = _attend_low_precision if is_low_precision(q, k, v) else attend
  return grouped(fn, q, k, v, mask, float(scale), softcap)
