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
  # Heads move next to batch and (T, G) merge into one query axis, so both attention matmuls and
  # all four of their gradients are plain batched [B, K] matmuls. With separate T and G axes
  # XLA:CPU transposes the [B, K, G, T, S] logits and their gradient into fresh buffers.
  qg = q.reshape(b, t, kh, g, h).transpose(0, 2, 1, 3, 4).reshape(b, kh, t * g, h)
  kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, H]
  logits = jnp.einsum("BKQH,BKSH->BKQS", qg, kt, preferred_element_type=jnp.float32)
  logits = logits.reshape(b, kh, t, g, s) * scale
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
                         q_seg=q_seg, k_seg=k_seg)[:, None, :, None, :]  # [B or 1, 1, T, 1, S]
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  # A query with no visible key (fully padded row) gets zeros, not a uniform average.
  probs = jnp.where(mask.any(-1, keepdims=True), probs, 0.0)
  out = jnp.einsum("BKQS,BKSH->BKQH", probs.reshape(b, kh, t * g, s).astype(v.dtype), vt,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, kh, t, g, h).transpose(0, 2, 1, 3, 4).reshape(b, t, n, h).astype(q.dtype)
