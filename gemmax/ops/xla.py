"""Attention in plain XLA (impl "xla"): grouped dot_generals (GQA as a reshape), float32 softmax,
the mask built from positions. gemmax.ops.xla_cpu runs the same computation with XLA:CPU's
measured speed-ups."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gemmax.ops.common import split_segments

_F32 = jnp.float32


def grouped_mask(
  t, s, *, causal, sliding_window, segment_ids, q_positions=None, kv_positions=None, xp=jnp
):
  """Boolean [B or 1, 1, T, 1, S] mask of `t` queries against `s` keys (the grouped layout below):
  key k is visible to query q iff k <= q (causal), q - W < k (window W: W keys including q
  itself) and their segment ids are equal. Default positions (an arange of module `xp`) put the
  queries last among the keys; NumPy ones give a NumPy mask (a constant under jit)."""
  q = (xp.arange(t)[None] + (s - t) if q_positions is None else q_positions)[..., :, None]
  k = (xp.arange(s)[None] if kv_positions is None else kv_positions)[..., None, :]
  q_seg, k_seg = split_segments(segment_ids)
  terms = [k <= q] if causal else []
  if sliding_window is not None:
    terms.append(k > q - sliding_window)
  if q_seg is not None:
    terms.append(q_seg[..., :, None] == k_seg[..., None, :])
  mask = np.ones(np.broadcast_shapes(q.shape, k.shape), dtype=bool)
  for term in terms:
    mask = term & mask  # a jax term on the left keeps the result a jax array
  return mask[:, None, :, None, :]


# The products take q as [B, T, K, G, H] and k, v as [B, S, K, H] as they are, never through an
# explicit transpose: XLA:CPU treats a dot fed by a transpose as unsupported by its matmul
# library and upcasts bf16 operands to f32 (2x slower here), while the dimension numbers below
# let XLA canonicalise the layouts itself. Logits come out [B, K, T, G, S]: (T, G) is one query
# axis per kv head, so no [B, K, G, T, S] transposes appear around the softmax either.
def dot(a, b, contract, batch):
  return jax.lax.dot_general(a, b, (contract, batch), preferred_element_type=_F32)


def masked_logits(q5, k, mask, scale, softcap):
  """f32 logits [B, K, T, G, S]: scaled, soft-capped (the cap comes before the mask), masked."""
  logits = dot(q5, k, ((4,), (3,)), ((0, 2), (0, 2))) * scale
  if softcap is not None:
    logits = jnp.tanh(logits / softcap) * softcap
  return jnp.where(mask, logits, jnp.finfo(_F32).min)


def mix_values(probs, v, out_dtype):
  """probs [B, K, T, G, S] @ v [B, S, K, H] -> [B, T, K, G, H] in `out_dtype`."""
  out = dot(probs.astype(v.dtype), v, ((4,), (1,)), ((0, 1), (0, 2)))  # [B, K, T, G, H]
  return out.transpose(0, 2, 1, 3, 4).astype(out_dtype)


def attend(q5, k, v, mask, scale, softcap):
  """q5 [B, T, K, G, H], k, v [B, S, K, H] -> [B, T, K, G, H] in q's dtype."""
  probs = jax.nn.softmax(masked_logits(q5, k, mask, scale, softcap), axis=-1)
  # A query with no visible key (fully padded row) gets zeros, not a uniform average.
  probs = jnp.where(mask.any(-1, keepdims=True), probs, 0.0)
  return mix_values(probs, v, q5.dtype)


def grouped(attend_fn, q, k, v, mask, scale, softcap):
  """`attend_fn` on q [B, T, N, H] seen as [B, T, K, G, H] (N = K * G); returns [B, T, N, H]."""
  b, t, n, h = q.shape
  out = attend_fn(q.reshape(b, t, k.shape[2], n // k.shape[2], h), k, v, mask, scale, softcap)
  return out.reshape(b, t, n, h)


def attention_xla(q, k, v, *, scale, softcap, **mask):
  """q: [B, T, N, H]; k, v: [B, S, K, H] with N = K * G. Returns [B, T, N, H] in q.dtype. `mask`:
  causal, sliding_window, segment_ids and optionally q_positions, kv_positions (`grouped_mask`)."""
  mask = grouped_mask(q.shape[1], k.shape[1], **mask)
  return grouped(attend, q, k, v, mask, float(scale), softcap)
