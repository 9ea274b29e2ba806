"""TPU path: jax's splash attention with LocalMask & CausalMask and logit soft-capping.

Splash works per example on [heads, seq, head_dim] and does not scale the logits, so q is
pre-scaled (softcap then sees scale * q.k, as in the reference). Sequences are padded to a multiple
of the block; padded tokens get their own segment id so no real query ever sees them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa

from gemmax.ops.common import pad_axis, round_up, split_segments

_PAD_SEGMENT = -1


def make_mask(q_len: int, kv_len: int, num_heads: int, *, causal: bool, sliding_window):
  """MultiHeadMask for `q - W < k <= q` (LocalMask with left size W - 1, and CausalMask)."""
  shape = (q_len, kv_len)
  if causal and sliding_window is not None:
    one = sa.LocalMask(shape, window_size=(sliding_window - 1, None), offset=0) & sa.CausalMask(
      shape
    )
  elif causal:
    one = sa.CausalMask(shape)
  elif sliding_window is not None:
    one = sa.LocalMask(shape, window_size=(sliding_window - 1, None), offset=0)
  else:
    one = sa.FullMask(shape)
  return sa.MultiHeadMask([one] * num_heads)


@functools.lru_cache(maxsize=64)
def _kernel(
  seq: int, num_heads: int, causal: bool, sliding_window, softcap, block: int, interpret: bool
):
  mask = make_mask(seq, seq, num_heads, causal=causal, sliding_window=sliding_window)
  sizes = sa.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  return sa.make_splash_mha(
    mask,
    head_shards=1,
    q_seq_shards=1,
    block_sizes=sizes,
    attn_logits_soft_cap=softcap,
    interpret=interpret,
  )


def attention_splash(
  q, k, v, *, scale, causal, sliding_window, softcap, segment_ids, block=512, interpret=None
):
  """q: [B, T, N, H]; k, v: [B, T, K, H] (self-attention only). Returns [B, T, N, H]."""
  b, t, n, h = q.shape
  if k.shape[1] != t:
    raise ValueError(f"splash attention needs q_len == kv_len; got {t} and {k.shape[1]}")
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  block = min(block, round_up(t, 128))
  tp = round_up(t, block)
  q_seg, k_seg = split_segments(segment_ids)
  segs = None
  if q_seg is not None or (tp != t and not causal):
    # Padded keys are only hidden by causality; otherwise give them a segment of their own.
    q_seg = jnp.zeros((b, t), jnp.int32) if q_seg is None else jnp.asarray(q_seg, jnp.int32)
    k_seg = jnp.zeros((b, t), jnp.int32) if k_seg is None else jnp.asarray(k_seg, jnp.int32)
    segs = sa.SegmentIds(
      q=pad_axis(q_seg, 1, tp, _PAD_SEGMENT), kv=pad_axis(k_seg, 1, tp, _PAD_SEGMENT)
    )
  kernel = _kernel(tp, n, bool(causal), sliding_window, softcap, block, bool(interpret))
  # [B, T, N, H] -> [B, N, T, H]; splash takes one example at a time, so vmap over batch.
  qs = pad_axis((q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 1, 3), 2, tp)
  ks = pad_axis(k.transpose(0, 2, 1, 3), 2, tp)
  vs = pad_axis(v.transpose(0, 2, 1, 3), 2, tp)
  if segs is None:
    out = jax.vmap(kernel)(qs, ks, vs)
  else:
    out = jax.vmap(lambda a, b_, c, s: kernel(a, b_, c, segment_ids=s))(qs, ks, vs, segs)
  return out[:, :, :t].transpose(0, 2, 1, 3).astype(q.dtype)
