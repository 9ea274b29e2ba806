"""Reference attention in plain XLA: grouped einsum (GQA as a reshape), f32 softmax."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def visibility_mask(q_pos, k_pos, *, causal, sliding_window, q_seg=None, k_seg=None):
  """Boolean [..., T, S] mask: key k visible to query q.

  Window W keeps keys with `q - W < k <= q` (W keys including q itself).
  """
  q = q_pos[..., :, None]
  k = k_pos[..., None, :]
  mask = jnp.ones(jnp.broadcast_shapes(q.shape, k.shape), dtype=bool)
  if causal:
    mask &= k <= q
  if sliding_window is not None:
    mask &= k > q - sliding_window
  if q_seg is not None:
    mask &= q_seg[..., :, None] == k_seg[..., None, :]
  return mask


def attention_xla(q, k, v, *, scale, causal, sliding_window, softcap, segment_ids,
                  q_positions=None, kv_positions=None):
  """q: [B, T, N, H]; k, v: [B, S, K, H] with N = K * G. Returns [B, T, N, H] in q.dtype."""
  b, t, n, h = q.shape
  s, kh = k.shape[1], k.shape[2]
  g = n // kh
  qg = q.reshape(b, t, kh, g, h)
  logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32)
  logits = logits * scale
  if softcap is not None:
    logits = jnp.tanh(logits / softcap) * softcap  # softcap comes before the mask
  if q_positions is None:
    q_positions = jnp.arange(t)[None] + (s - t)  # queries are the last t keys
  if kv_positions is None:
    kv_positions = jnp.arange(s)[None]
  q_seg = k_seg = None
  if segment_ids is not None:
    q_seg, k_seg = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
  mask = visibility_mask(q_positions, kv_positions, causal=causal, sliding_window=sliding_window,
                         q_seg=q_seg, k_seg=k_seg)  # [B or 1, T, S]
  logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  # A query with no visible key (fully padded row) gets zeros, not a uniform average.
  probs = jnp.where(mask[:, None, None].any(-1, keepdims=True), probs, 0.0)
  out = jnp.einsum("BKGTS,BSKH->BTKGH", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, t, n, h).astype(q.dtype)
