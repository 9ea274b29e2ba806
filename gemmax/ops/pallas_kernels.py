"""Pallas flash-attention kernels (Triton-style): forward, dq, and dk/dv.

Each kernel instance owns one tile of one (batch, head) pair and loops (`fori_loop`) over only the
tiles on the other side that intersect its causal window. Logits are kept in the base-2 domain
(`x * log2(e)`, then `exp2`), which is cheaper on GPUs; the saved log-sum-exp is base 2 as well.

Tile shapes: q/do/o tiles [block_q, head_dim], k/v tiles [block_k, head_dim], logits
[block_q, block_k]. Softcap: s = cap * tanh(x / cap) with x = scale * q.k, so
ds/dx = 1 - tanh^2.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from gemmax.ops.common import MASK_VALUE, block_mask, key_block_range, query_block_range

LOG2E = math.log2(math.e)


def _logits(q, k, cfg):
  """q [Tq, H], k [Tk, H] -> (base-2 logits [Tq, Tk] f32, tanh or None)."""
  s = pl.dot(q, k, trans_b=True, precision=cfg["precision"]) * cfg["scale"]
  if cfg["softcap"] is None:
    return s * LOG2E, None
  c = jnp.tanh(s / cfg["softcap"])
  return c * (cfg["softcap"] * LOG2E), c


def _mask(cfg, q_pos, k_pos, q_seg, k_seg):
  return block_mask(
    q_pos,
    k_pos,
    kv_len=cfg["kv_len"],
    causal=cfg["causal"],
    sliding_window=cfg["sliding_window"],
    q_seg=q_seg,
    k_seg=k_seg,
  )


def _key_bounds(cfg, q_block_index):
  q_lo = q_block_index * cfg["block_q"] + cfg["offset"]
  return key_block_range(
    q_lo,
    q_lo + cfg["block_q"] - 1,
    block_k=cfg["block_k"],
    num_k_blocks=cfg["num_k_blocks"],
    causal=cfg["causal"],
    sliding_window=cfg["sliding_window"],
  )


def forward_kernel(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, o_ref, lse_ref, *, cfg):
  """Grid (batch, head, q_block). q/o refs: one tile; k/v/kseg refs: the whole (padded) sequence."""
  bq, bk = cfg["block_q"], cfg["block_k"]
  i = pl.program_id(2)
  q = q_ref[...]
  q_pos = i * bq + jnp.arange(bq) + cfg["offset"]
  q_seg = None if qseg_ref is None else qseg_ref[...]

  def body(j, carry):
    m, l, acc = carry
    ks = pl.ds(j * bk, bk)
    k = k_ref[ks, :]
    v = v_ref[ks, :]
    s, _ = _logits(q, k, cfg)
    k_seg = None if kseg_ref is None else kseg_ref[ks]
    mask = _mask(cfg, q_pos, j * bk + jnp.arange(bk), q_seg, k_seg)
    s = jnp.where(mask, s, MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp2(m - m_new)
    # where(): rows with no visible key in this tile must add 0, not exp2(MASK - MASK) = 1.
    p = jnp.where(mask, jnp.exp2(s - m_new[:, None]), 0.0)
    l = alpha * l + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + pl.dot(p.astype(v.dtype), v, precision=cfg["precision"])
    return m_new, l, acc

  init = (
    jnp.full((bq,), MASK_VALUE, jnp.float32),
    jnp.zeros((bq,), jnp.float32),
    jnp.zeros((bq, q.shape[-1]), jnp.float32),
  )
  start, end = _key_bounds(cfg, i)
  m, l, acc = lax.fori_loop(start, end, body, init)
  seen = l > 0.0  # a query with no visible key at all outputs zeros, like the reference
  l_safe = jnp.where(seen, l, 1.0)
  o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log2(l_safe), 0.0)


def _grad_tile(q, k, v, do, lse, delta, mask, cfg):
  """Shared backward tile math -> (p [Tq, Tk] f32, ds [Tq, Tk] f32 w.r.t. q.k)."""
  s, c = _logits(q, k, cfg)
  p = jnp.where(mask, jnp.exp2(s - lse[:, None]), 0.0)
  dp = pl.dot(do, v, trans_b=True, precision=cfg["precision"])
  ds = p * (dp - delta[:, None])
  if c is not None:
    ds = ds * (1.0 - c * c)  # d(cap * tanh(x / cap)) / dx
  return p, ds * cfg["scale"]


def dq_kernel(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, do_ref, lse_ref, delta_ref, dq_ref, *, cfg):
  """Grid (batch, head, q_block): dq for one query tile, looping over its visible key tiles."""
  bq, bk = cfg["block_q"], cfg["block_k"]
  i = pl.program_id(2)
  q = q_ref[...]
  do = do_ref[...]
  lse = lse_ref[...]
  delta = delta_ref[...]
  q_pos = i * bq + jnp.arange(bq) + cfg["offset"]
  q_seg = None if qseg_ref is None else qseg_ref[...]

  def body(j, dq):
    ks = pl.ds(j * bk, bk)
    k = k_ref[ks, :]
    v = v_ref[ks, :]
    k_seg = None if kseg_ref is None else kseg_ref[ks]
    mask = _mask(cfg, q_pos, j * bk + jnp.arange(bk), q_seg, k_seg)
    _, ds = _grad_tile(q, k, v, do, lse, delta, mask, cfg)
    return dq + pl.dot(ds.astype(k.dtype), k, precision=cfg["precision"])

  start, end = _key_bounds(cfg, i)
  dq = lax.fori_loop(start, end, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def dkdv_kernel(
  q_ref, k_ref, v_ref, qseg_ref, kseg_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, cfg
):
  """Grid (batch, head, k_block): this query head's share of dk/dv for one key tile.

  k/v/kseg refs are one tile; q/do/lse/delta/qseg refs the whole (padded) query sequence.
  """
  bq, bk = cfg["block_q"], cfg["block_k"]
  j = pl.program_id(2)
  k = k_ref[...]
  v = v_ref[...]
  k_pos = j * bk + jnp.arange(bk)
  k_seg = None if kseg_ref is None else kseg_ref[...]

  def body(i, carry):
    dk, dv = carry
    qs = pl.ds(i * bq, bq)
    q = q_ref[qs, :]
    do = do_ref[qs, :]
    q_seg = None if qseg_ref is None else qseg_ref[qs]
    mask = _mask(cfg, i * bq + jnp.arange(bq) + cfg["offset"], k_pos, q_seg, k_seg)
    p, ds = _grad_tile(q, k, v, do, lse_ref[qs], delta_ref[qs], mask, cfg)
    dv = dv + pl.dot(p.astype(do.dtype), do, trans_a=True, precision=cfg["precision"])
    dk = dk + pl.dot(ds.astype(q.dtype), q, trans_a=True, precision=cfg["precision"])
    return dk, dv

  start, end = query_block_range(
    j * bk,
    j * bk + bk - 1,
    block_q=bq,
    num_q_blocks=cfg["num_q_blocks"],
    offset=cfg["offset"],
    causal=cfg["causal"],
    sliding_window=cfg["sliding_window"],
  )
  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(start, end, body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
