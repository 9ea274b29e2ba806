"""Blockwise (flash-style) attention in plain XLA: the long-context path on CPU.

Queries are processed one block at a time (outer loop) and, for each query block, only the key
blocks that intersect its causal window (inner loop with data-dependent bounds) are visited with an
online softmax. Live memory is one [block_q, block_k] logit tile per head plus the inputs and
outputs, so it grows as O(seq) instead of O(seq^2). The backward pass is a custom_vjp that
recomputes the tiles from the saved log-sum-exp, so it is memory-bounded as well.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from gemmax.ops.common import (
  MASK_VALUE,
  block_mask,
  key_block_range,
  pad_axis,
  round_up,
  split_segments,
)


def _tile_logits(q_blk, k_blk, scale, softcap):
  """q_blk [B, Tq, K, G, H], k_blk [B, Tk, K, H] -> (capped logits, tanh or None) [B, K, G, Tq, Tk]."""
  s = jnp.einsum("BTKGH,BSKH->BKGTS", q_blk, k_blk, preferred_element_type=jnp.float32) * scale
  if softcap is None:
    return s, None
  c = jnp.tanh(s / softcap)
  return c * softcap, c


def _tile_mask(cfg, i, j, segs):
  """Visibility of key block j to query block i, shaped to broadcast over [B, K, G, Tq, Tk]."""
  bq, bk = cfg["block_q"], cfg["block_k"]
  q_pos = i * bq + jnp.arange(bq) + cfg["offset"]
  k_pos = j * bk + jnp.arange(bk)
  q_seg = k_seg = None
  if segs is not None:
    q_seg = lax.dynamic_slice_in_dim(segs[0], i * bq, bq, axis=1)
    k_seg = lax.dynamic_slice_in_dim(segs[1], j * bk, bk, axis=1)
  mask = block_mask(
    q_pos,
    k_pos,
    kv_len=cfg["kv_len"],
    causal=cfg["causal"],
    sliding_window=cfg["sliding_window"],
    q_seg=q_seg,
    k_seg=k_seg,
  )
  return mask[:, None, None] if mask.ndim == 3 else mask[None, None, None]


def _key_range(cfg, i):
  bq = cfg["block_q"]
  q_lo = i * bq + cfg["offset"]
  return key_block_range(
    q_lo,
    q_lo + bq - 1,
    block_k=cfg["block_k"],
    num_k_blocks=cfg["num_k_blocks"],
    causal=cfg["causal"],
    sliding_window=cfg["sliding_window"],
  )


def _forward(cfg, q, k, v, segs):
  """q [B, Tp, K, G, H]; k, v [B, Sp, K, H] -> out like q, lse [B, K, G, Tp] (f32)."""
  b, tp, kh, g, h = q.shape
  bq, bk = cfg["block_q"], cfg["block_k"]

  def q_block(i, carry):
    out, lse = carry
    q_blk = lax.dynamic_slice_in_dim(q, i * bq, bq, axis=1)

    def k_block(j, state):
      m, l, acc = state
      k_blk = lax.dynamic_slice_in_dim(k, j * bk, bk, axis=1)
      v_blk = lax.dynamic_slice_in_dim(v, j * bk, bk, axis=1)
      s, _ = _tile_logits(q_blk, k_blk, cfg["scale"], cfg["softcap"])
      mask = _tile_mask(cfg, i, j, segs)
      s = jnp.where(mask, s, MASK_VALUE)
      m_new = jnp.maximum(m, s.max(-1))
      alpha = jnp.exp(m - m_new)
      # where(): a fully masked tile row must add 0, not exp(MASK - MASK) = 1.
      p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
      l = alpha * l + p.sum(-1)
      pv = jnp.einsum(
        "BKGTS,BSKH->BKGTH", p.astype(v.dtype), v_blk, preferred_element_type=jnp.float32
      )
      return m_new, l, alpha[..., None] * acc + pv

    init = (
      jnp.full((b, kh, g, bq), MASK_VALUE, jnp.float32),
      jnp.zeros((b, kh, g, bq), jnp.float32),
      jnp.zeros((b, kh, g, bq, h), jnp.float32),
    )
    start, end = _key_range(cfg, i)
    m, l, acc = lax.fori_loop(start, end, k_block, init)
    # Queries that see no key at all get zeros (as the reference does).
    o_blk = acc / jnp.where(l > 0, l, 1.0)[..., None]
    lse_blk = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), 0.0)
    out = lax.dynamic_update_slice_in_dim(
      out, o_blk.transpose(0, 3, 1, 2, 4).astype(out.dtype), i * bq, axis=1
    )
    lse = lax.dynamic_update_slice_in_dim(lse, lse_blk, i * bq, axis=3)
    return out, lse

  init = (jnp.zeros_like(q), jnp.zeros((b, kh, g, tp), jnp.float32))
  return lax.fori_loop(0, cfg["num_q_blocks"], q_block, init)


def _backward(cfg, q, k, v, segs, out, lse, do):
  """Recomputes each visible tile; returns dq, dk, dv in the input dtypes."""
  bq, bk = cfg["block_q"], cfg["block_k"]
  scale, softcap = cfg["scale"], cfg["softcap"]
  delta = jnp.einsum("BTKGH,BTKGH->BKGT", out.astype(jnp.float32), do.astype(jnp.float32))

  def q_block(i, carry):
    dq, dk, dv = carry
    q_blk = lax.dynamic_slice_in_dim(q, i * bq, bq, axis=1)
    do_blk = lax.dynamic_slice_in_dim(do, i * bq, bq, axis=1)
    lse_blk = lax.dynamic_slice_in_dim(lse, i * bq, bq, axis=3)
    delta_blk = lax.dynamic_slice_in_dim(delta, i * bq, bq, axis=3)

    def k_block(j, state):
      dq_blk, dk, dv = state
      k_blk = lax.dynamic_slice_in_dim(k, j * bk, bk, axis=1)
      v_blk = lax.dynamic_slice_in_dim(v, j * bk, bk, axis=1)
      s, c = _tile_logits(q_blk, k_blk, scale, softcap)
      mask = _tile_mask(cfg, i, j, segs)
      p = jnp.where(mask, jnp.exp(s - lse_blk[..., None]), 0.0)
      dv_blk = jnp.einsum(
        "BKGTS,BTKGH->BSKH", p.astype(do.dtype), do_blk, preferred_element_type=jnp.float32
      )
      dp = jnp.einsum("BTKGH,BSKH->BKGTS", do_blk, v_blk, preferred_element_type=jnp.float32)
      ds = p * (dp - delta_blk[..., None])
      if c is not None:
        ds = ds * (1.0 - c * c)  # d(cap * tanh(x / cap)) / dx
      ds = ds * scale
      dq_blk = dq_blk + jnp.einsum("BKGTS,BSKH->BTKGH", ds, k_blk.astype(jnp.float32))
      dk_blk = jnp.einsum("BKGTS,BTKGH->BSKH", ds, q_blk.astype(jnp.float32))
      dk = lax.dynamic_update_slice_in_dim(
        dk, lax.dynamic_slice_in_dim(dk, j * bk, bk, axis=1) + dk_blk, j * bk, axis=1
      )
      dv = lax.dynamic_update_slice_in_dim(
        dv, lax.dynamic_slice_in_dim(dv, j * bk, bk, axis=1) + dv_blk, j * bk, axis=1
      )
      return dq_blk, dk, dv

    start, end = _key_range(cfg, i)
    dq_blk, dk, dv = lax.fori_loop(
      start, end, k_block, (jnp.zeros(q_blk.shape, jnp.float32), dk, dv)
    )
    dq = lax.dynamic_update_slice_in_dim(dq, dq_blk, i * bq, axis=1)
    return dq, dk, dv

  init = (
    jnp.zeros(q.shape, jnp.float32),
    jnp.zeros(k.shape, jnp.float32),
    jnp.zeros(v.shape, jnp.float32),
  )
  dq, dk, dv = lax.fori_loop(0, cfg["num_q_blocks"], q_block, init)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked(cfg, q, k, v, segs):
  return _forward(cfg, q, k, v, segs)[0]


def _chunked_fwd(cfg, q, k, v, segs):
  out, lse = _forward(cfg, q, k, v, segs)
  return out, (q, k, v, segs, out, lse)


def _chunked_bwd(cfg, res, do):
  q, k, v, segs, out, lse = res
  dq, dk, dv = _backward(cfg, q, k, v, segs, out, lse, do)
  return dq, dk, dv, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


class _Cfg(dict):
  """Static settings; hashable so custom_vjp can treat them as a non-differentiable argument."""

  def __hash__(self):
    return hash(tuple(sorted(self.items())))


def attention_xla_chunked(
  q, k, v, *, scale, causal, sliding_window, softcap, segment_ids, block_size=512
):
  """q: [B, T, N, H]; k, v: [B, S, K, H], N = K * G, T <= S (queries are the last T keys).

  Returns [B, T, N, H] in q.dtype. `block_size` is the tile edge for both queries and keys.
  """
  b, t, n, h = q.shape
  s, kh = k.shape[1], k.shape[2]
  if t > s:
    raise ValueError(f"xla_chunked needs q_len <= kv_len; got q_len={t}, kv_len={s}")
  bq = min(block_size, round_up(t, 8))
  bk = min(block_size, round_up(s, 8))
  tp, sp = round_up(t, bq), round_up(s, bk)
  cfg = _Cfg(
    scale=float(scale),
    causal=bool(causal),
    sliding_window=None if sliding_window is None else int(sliding_window),
    softcap=None if softcap is None else float(softcap),
    offset=s - t,
    kv_len=s,
    block_q=bq,
    block_k=bk,
    num_q_blocks=tp // bq,
    num_k_blocks=sp // bk,
  )
  q_seg, k_seg = split_segments(segment_ids)
  segs = None
  if q_seg is not None:
    segs = (
      pad_axis(jnp.asarray(q_seg, jnp.int32), 1, tp),
      pad_axis(jnp.asarray(k_seg, jnp.int32), 1, sp),
    )
  qg = pad_axis(q, 1, tp).reshape(b, tp, kh, n // kh, h)
  out = _chunked(cfg, qg, pad_axis(k, 1, sp), pad_axis(v, 1, sp), segs)
  return out.reshape(b, tp, n, h)[:, :t]
