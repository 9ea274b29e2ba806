"""The oracle: plain einsum versions of the model's ops, the definitions every faster
implementation (gemmax.ops.xla, xla_cpu, chunked, Pallas, splash, gemmax.ops.fused) is tested
against. Written for reading, not speed: float32 throughout, one obvious path."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention(
  q,
  k,
  v,
  *,
  scale=None,
  causal=True,
  sliding_window=None,
  softcap=None,
  segment_ids=None,
  q_positions=None,
  kv_positions=None,
):
  """q [B, T, N, H]; k, v [B, S, K, H], N = K * G (GQA: G query heads share a kv head).

  Key k is visible to query q iff k <= q (causal), q - W < k (window W) and their segment ids are
  equal; default positions put the T queries last among the S keys. The soft-cap comes before the
  mask; a query with no visible key gives zeros. Returns [B, T, N, H] in q's dtype.
  """
  b, t, n, h = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  q_pos = jnp.arange(t)[None] + (s - t) if q_positions is None else q_positions
  k_pos = jnp.arange(s)[None] if kv_positions is None else kv_positions
  qp, kp = q_pos[:, :, None], k_pos[:, None, :]
  mask = jnp.ones((1, t, s), bool)  # [B, T, S]
  if causal:
    mask = mask & (kp <= qp)
  if sliding_window is not None:
    mask = mask & (kp > qp - sliding_window)
  if segment_ids is not None:
    q_seg, k_seg = segment_ids if isinstance(segment_ids, (tuple, list)) else (segment_ids,) * 2
    mask = mask & (q_seg[:, :, None] == k_seg[:, None, :])
  mask = mask[:, None, None]  # [B, 1, 1, T, S]
  f32 = jnp.float32
  qg = q.astype(f32).reshape(b, t, kv_heads, n // kv_heads, h)
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k.astype(f32)) * (
    h**-0.5 if scale is None else scale
  )
  if softcap is not None:
    logits = jnp.tanh(logits / softcap) * softcap
  probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(f32).min), axis=-1)
  probs = jnp.where(mask.any(-1, keepdims=True), probs, 0.0)
  out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(f32))
  return out.reshape(b, t, n, h).astype(q.dtype)


def gated(act, gate, up):
  """The gated MLP activation act(gate) * up, computed in float32 and rounded once to gate's
  dtype (torch's arithmetic for bf16 tensors)."""
  f32 = jnp.promote_types(gate.dtype, jnp.float32)
  return (act(gate.astype(f32)) * up.astype(f32)).astype(gate.dtype)


def rotate_half(x):
  """[x1, x2] -> [-x2, x1] over the last axis (the half-split RoPE layout)."""
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rotate(x, cos, sin):
  """RoPE: rotates the pairs (i, i + H/2) of x [..., H] by the angles of the given cos and sin."""
  return x * cos + rotate_half(x) * sin
