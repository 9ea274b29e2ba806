"""Pallas flash attention: pallas_calls for the kernels in pallas_kernels.py, and a custom_vjp.

GQA is expressed in the K/V BlockSpec index maps (query head n reads kv head n // G), so K/V are
never repeated. Sequences are padded internally to a multiple of the tile and the padding masked;
head_dim is zero-padded to a power of two (Triton tiles must be powers of two). On CPU the
kernels run with interpret=True.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from gemmax.ops import pallas_kernels as K
from gemmax.ops.common import pad_axis, round_up, split_segments


class _Cfg(dict):
  """Static kernel settings; hashable so it can be a non-differentiable custom_vjp argument."""

  def __hash__(self):
    return hash(tuple(sorted(self.items())))


def _params(cfg, head_dim):
  # Heuristic warps (as in jax's own Triton attention); ignored in interpret mode.
  return plgpu.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)


def _seg_specs(cfg, q_tiled: bool, k_tiled: bool, has_seg: bool):
  if not has_seg:
    return [None, None]
  bq, bk, tp, sp = cfg["block_q"], cfg["block_k"], cfg["tp"], cfg["sp"]
  q_spec = (
    pl.BlockSpec((None, bq), lambda b, n, i: (b, i))
    if q_tiled
    else pl.BlockSpec((None, tp), lambda b, n, i: (b, 0))
  )
  k_spec = (
    pl.BlockSpec((None, bk), lambda b, n, j: (b, j))
    if k_tiled
    else pl.BlockSpec((None, sp), lambda b, n, j: (b, 0))
  )
  return [q_spec, k_spec]


def _forward(cfg, q, k, v, segs):
  """q [B, Tp, N, H]; k, v [B, Sp, K, H] -> out [B, Tp, N, H], lse [B, N, Tp] (base 2, f32)."""
  b, tp, n, h = q.shape
  g, bq, sp = cfg["groups"], cfg["block_q"], cfg["sp"]
  q_tile = pl.BlockSpec((None, bq, None, h), lambda bi, ni, i: (bi, i, ni, 0))
  kv_full = pl.BlockSpec((None, sp, None, h), lambda bi, ni, i: (bi, 0, lax.div(ni, g), 0))
  qs, ks = (None, None) if segs is None else segs
  return pl.pallas_call(
    functools.partial(K.forward_kernel, cfg=cfg),
    grid=(b, n, tp // bq),
    in_specs=[q_tile, kv_full, kv_full] + _seg_specs(cfg, True, False, segs is not None),
    out_specs=[q_tile, pl.BlockSpec((None, None, bq), lambda bi, ni, i: (bi, ni, i))],
    out_shape=[
      jax.ShapeDtypeStruct(q.shape, q.dtype),
      jax.ShapeDtypeStruct((b, n, tp), jnp.float32),
    ],
    compiler_params=_params(cfg, h),
    interpret=cfg["interpret"],
    name="gemmax_flash_fwd",
  )(q, k, v, qs, ks)


def _backward(cfg, q, k, v, segs, out, lse, do):
  b, tp, n, h = q.shape
  sp, kh = k.shape[1], k.shape[2]
  g, bq, bk = cfg["groups"], cfg["block_q"], cfg["block_k"]
  qs, ks = (None, None) if segs is None else segs
  # delta_i = sum_h o_ih * do_ih, the softmax-Jacobian term shared by dq and dk.
  delta = jnp.einsum("BTNH,BTNH->BNT", out.astype(jnp.float32), do.astype(jnp.float32))

  q_tile = pl.BlockSpec((None, bq, None, h), lambda bi, ni, i: (bi, i, ni, 0))
  row_tile = pl.BlockSpec((None, None, bq), lambda bi, ni, i: (bi, ni, i))
  kv_full = pl.BlockSpec((None, sp, None, h), lambda bi, ni, i: (bi, 0, lax.div(ni, g), 0))
  dq = pl.pallas_call(
    functools.partial(K.dq_kernel, cfg=cfg),
    grid=(b, n, tp // bq),
    in_specs=[q_tile, kv_full, kv_full]
    + _seg_specs(cfg, True, False, segs is not None)
    + [q_tile, row_tile, row_tile],
    out_specs=q_tile,
    out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    compiler_params=_params(cfg, h),
    interpret=cfg["interpret"],
    name="gemmax_flash_dq",
  )(q, k, v, qs, ks, do, lse, delta)

  q_full = pl.BlockSpec((None, tp, None, h), lambda bi, ni, j: (bi, 0, ni, 0))
  row_full = pl.BlockSpec((None, None, tp), lambda bi, ni, j: (bi, ni, 0))
  kv_tile = pl.BlockSpec((None, bk, None, h), lambda bi, ni, j: (bi, j, lax.div(ni, g), 0))
  # One dk/dv slab per query head (f32), summed over the G heads of a group below.
  dkv_tile = pl.BlockSpec((None, bk, None, h), lambda bi, ni, j: (bi, j, ni, 0))
  dk, dv = pl.pallas_call(
    functools.partial(K.dkdv_kernel, cfg=cfg),
    grid=(b, n, sp // bk),
    in_specs=[q_full, kv_tile, kv_tile]
    + _seg_specs(cfg, False, True, segs is not None)
    + [q_full, row_full, row_full],
    out_specs=[dkv_tile, dkv_tile],
    out_shape=[jax.ShapeDtypeStruct((b, sp, n, h), jnp.float32)] * 2,
    compiler_params=_params(cfg, h),
    interpret=cfg["interpret"],
    name="gemmax_flash_dkdv",
  )(q, k, v, qs, ks, do, lse, delta)
  dk = dk.reshape(b, sp, kh, g, h).sum(3).astype(k.dtype)
  dv = dv.reshape(b, sp, kh, g, h).sum(3).astype(v.dtype)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg, q, k, v, segs):
  return _forward(cfg, q, k, v, segs)[0]


def _flash_fwd(cfg, q, k, v, segs):
  out, lse = _forward(cfg, q, k, v, segs)
  return out, (q, k, v, segs, out, lse)


def _flash_bwd(cfg, res, do):
  q, k, v, segs, out, lse = res
  return (*_backward(cfg, q, k, v, segs, out, lse, do), None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def default_blocks(head_dim: int, interpret: bool) -> tuple[int, int]:
  """(block_q, block_k). Small tiles in interpret mode keep CPU tests fast."""
  if interpret:
    return 16, 16
  return (128, 64) if head_dim <= 128 else (64, 32)


def attention_pallas(
  q,
  k,
  v,
  *,
  scale,
  causal,
  sliding_window,
  softcap,
  segment_ids,
  block_q=None,
  block_k=None,
  interpret=None,
):
  """q: [B, T, N, H]; k, v: [B, S, K, H], N = K * G, T <= S (queries are the last T keys).

  Returns [B, T, N, H] in q.dtype. `interpret=None` interprets when the backend is CPU.
  """
  b, t, n, h = q.shape
  s, kh = k.shape[1], k.shape[2]
  if t > s:
    raise ValueError(f"pallas attention needs q_len <= kv_len; got q_len={t}, kv_len={s}")
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  dbq, dbk = default_blocks(h, interpret)
  bq = min(block_q or dbq, max(16, pl.next_power_of_2(t)))
  bk = min(block_k or dbk, max(16, pl.next_power_of_2(s)))
  tp, sp, hp = round_up(t, bq), round_up(s, bk), max(16, pl.next_power_of_2(h))
  f32 = q.dtype == jnp.float32
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
    tp=tp,
    sp=sp,
    groups=n // kh,
    interpret=bool(interpret),
    precision=lax.Precision.HIGHEST if f32 else None,
  )
  q_seg, k_seg = split_segments(segment_ids)
  segs = None
  if q_seg is not None:
    segs = (
      pad_axis(jnp.asarray(q_seg, jnp.int32), 1, tp),
      pad_axis(jnp.asarray(k_seg, jnp.int32), 1, sp),
    )
  # Zero-padding head_dim leaves q.k unchanged and adds output columns that are sliced off.
  qp = pad_axis(pad_axis(q, 1, tp), 3, hp)
  kp = pad_axis(pad_axis(k, 1, sp), 3, hp)
  vp = pad_axis(pad_axis(v, 1, sp), 3, hp)
  out = _flash(cfg, qp, kp, vp, segs)
  return out[:, :t, :, :h]
