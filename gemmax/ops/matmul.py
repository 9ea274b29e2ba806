"""Matrix products in the forms XLA:CPU runs fastest, which the model's projections, the LoRA
down-projection and the losses call instead of `x @ w`. Each equals the plain product accumulated
in float32 and rounded once to the output dtype. Measured on this machine, XLA:CPU's matmul library:

- runs bf16 x bf16 -> f32 dots natively (AMX / AVX512-BF16: 600-900 GFLOP/s) but upcasts a dot
  whose result is bf16 (~170 GFLOP/s): `dot2d` accumulates in float32 and casts after;
- upcasts too a 2-D product that contracts an operand's leading axis or is fed by an explicit
  transpose: `contract_tokens` (weight gradients) splits the token axis, and the custom VJPs keep
  every gradient product in a supported form;
- canonicalises a weight gradient that contracts two dims ([B, T, in] inputs) with a strided copy
  of the cotangent: `matmul` flattens to [tokens, in] first;
- streams a weight fastest in decoding (1-8 rows times every weight, bounded by reading weights)
  with the weight stored [out, in] as the left operand: `matmul_t`. Measured on SmolLM2-135M's
  weights (benchmarks/RESULTS.md, "Real model"): `wt @ x^T` ran float32 at 19 GB/s for one row,
  13 GB/s for eight, where `x @ w` re-packed the weight (2-5 GB/s). A one-row bf16 product is
  upcast with the whole weight converted every call (1.8 GB/s); padded with zero rows to four
  (behind a barrier, so the pad is a buffer of its own) it runs as a native bf16 dot: 16 GB/s.
  Faster still, a single bf16 row is a multiply-and-reduce (`_one_row`): XLA fuses the weight's
  float32 conversion into the reduction, which reads only the bf16 bytes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gemmax.ops.common import is_low_precision

# Up to this many rows `matmul_t` streams the weight as the left operand.
FEW_ROWS = 64
# Low-precision products of fewer rows are padded with zero rows up to this many.
PAD_ROWS = 4


def _contract(x, w, x_dim: int, w_dim: int) -> jax.Array:
  """2-D product contracting x's dim `x_dim` with w's dim `w_dim`, float32 accumulation."""
  return jax.lax.dot_general(
    x, w, (((x_dim,), (w_dim,)), ((), ())), preferred_element_type=jnp.float32
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dot_f32_acc(x: jax.Array, w: jax.Array, w_t: bool, out_dtype) -> jax.Array:
  """x [n, k] @ (w [k, m], or w [m, k] transposed when w_t) for bf16/f16 operands, accumulated
  in float32 and cast to `out_dtype`. The transposes are contracting dims (`jnp.dot(a, b.T)`
  compiles to the slow path); the custom VJP keeps both gradient products bf16 x bf16 -> f32,
  where autodiff would give f32 x bf16 ones (upcast again)."""
  return _contract(x, w, 1, 1 if w_t else 0).astype(out_dtype)


def _dot_f32_acc_fwd(x, w, w_t, out_dtype):
  return _dot_f32_acc(x, w, w_t, out_dtype), (x, w)


def contract_tokens(a: jax.Array, b: jax.Array) -> jax.Array:
  """a^T @ b for a [n, p], b [n, q] -> [p, q] float32: a weight gradient, contracting tokens.

  Written with the token axis split in two, XLA canonicalises the dot itself (a transposing copy
  of `a`, so keep `a` the smaller operand) into a bf16 x bf16 -> f32 library dot: 3-6x faster for
  bf16 here. float32 operands (and odd n) keep the 2-D form, which is as fast for them.
  """
  n = a.shape[0]
  if is_low_precision(a, b) and n % 2 == 0 and n > 2:
    a, b = a.reshape(2, n // 2, a.shape[1]), b.reshape(2, n // 2, b.shape[1])
    return jax.lax.dot_general(
      a, b, (((0, 1), (0, 1)), ((), ())), preferred_element_type=jnp.float32
    )
  return _contract(a, b, 0, 0)


def _dot_f32_acc_bwd(w_t, out_dtype, res, g):
  x, w = res
  g = g.astype(x.dtype)  # the gradient enters the products in the operands' precision
  dx = _contract(g, w, 1, 0 if w_t else 1)
  dw = contract_tokens(g, x) if w_t else contract_tokens(x, g)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_dot_f32_acc.defvjp(_dot_f32_acc_fwd, _dot_f32_acc_bwd)


def dot2d(
  x: jax.Array, w: jax.Array, *, w_t: bool = False, preferred_element_type=None
) -> jax.Array:
  """x [n, k] @ w [k, m] (or @ w.T for w [m, k] when `w_t`); bf16/f16 operands accumulate in
  float32 through `_dot_f32_acc`, float32 ones take XLA's dot as is."""
  if is_low_precision(x, w):
    return _dot_f32_acc(x, w, w_t, jnp.dtype(preferred_element_type or x.dtype))
  return jnp.dot(x, w.T if w_t else w, preferred_element_type=preferred_element_type)


def matmul(x: jax.Array, w: jax.Array, preferred_element_type=None) -> jax.Array:
  """x [..., in] @ w [in, out] -> [..., out], computed as one 2-D [tokens, in] product."""
  lead = x.shape[:-1]
  y = dot2d(x.reshape(-1, x.shape[-1]), w, preferred_element_type=preferred_element_type)
  return y.reshape(*lead, w.shape[-1])


def _weight_left(x, wt, preferred_element_type):
  """(wt @ x^T)^T; the barrier stops XLA from folding it back into x @ wt^T."""
  y = dot2d(wt, x, w_t=True, preferred_element_type=preferred_element_type)
  return jax.lax.optimization_barrier(y).T


def _one_row(x, wt, preferred_element_type):
  """x [1, in] @ wt [out, in]^T for bf16 operands, as sum(wt * x) over `in` in float32.

  Measured on SmolLM2-135M (benchmarks/RESULTS.md): its decode products (30 layers and the head,
  one-row steps in a `fori_loop`) streamed the bf16 weights at 13.5 GB/s against 9.2 for the
  padded library dot, and the whole batch-1 decode ran 1.1-1.45x faster (alternating processes;
  the smaller gain under gemmax.host_memory's malloc settings). float16 ran slower this way
  (59.8 against 35.1 ms), so it keeps the padded dot. The barrier ties the weight to `x`: without
  it XLA hoists the weight's float32 conversion out of a decode loop as loop-invariant, and the
  loop reads twice the bytes.
  """
  wt, x = jax.lax.optimization_barrier((wt, x))
  y = jnp.sum(wt.astype(jnp.float32) * x.astype(jnp.float32), axis=-1)
  return y[None].astype(preferred_element_type or x.dtype)


def matmul_t(x: jax.Array, wt: jax.Array, preferred_element_type=None) -> jax.Array:
  """x [..., in] @ wt[out, in]^T -> [..., out]; up to FEW_ROWS rows as (wt @ x^T)^T, one bf16
  row as a multiply-and-reduce, fewer than PAD_ROWS bf16/f16 rows padded with zero rows (which
  add nothing to the real rows' sums)."""
  lead, kw = x.shape[:-1], dict(preferred_element_type=preferred_element_type)
  x2 = x.reshape(-1, x.shape[-1])
  m = x2.shape[0]
  if m > FEW_ROWS:
    y = dot2d(x2, wt, w_t=True, **kw)
  elif m >= PAD_ROWS or not is_low_precision(x2, wt):
    y = _weight_left(x2, wt, **kw)
  elif m == 1 and x2.dtype == wt.dtype == jnp.bfloat16:
    y = _one_row(x2, wt, **kw)
  else:
    pad = jnp.zeros((PAD_ROWS - m, x2.shape[1]), x2.dtype)
    y = _weight_left(jax.lax.optimization_barrier(jnp.concatenate([x2, pad])), wt, **kw)[:m]
  return y.reshape(*lead, wt.shape[0])


@jax.custom_vjp
def matmul_narrow(x: jax.Array, a: jax.Array) -> jax.Array:
  """x [..., in] @ a [in, r] for a narrow `a` (r << in: a LoRA down-projection).

  dA = x^T g contracts the token axis. XLA folds any transpose into the dot and emits it as
  [in, r] = x^T g, which XLA:CPU runs ~6x slower than the same product laid out [r, in] = g^T x
  (tiny rank leading); the custom VJP keeps that layout behind a barrier and transposes only the
  [r, in] result.
  """
  return matmul(x, a)


def _narrow_fwd(x, a):
  return matmul(x, a), (x, a)


def _narrow_bwd(res, g):
  x, a = res
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  da = jax.lax.optimization_barrier(contract_tokens(g2.astype(x2.dtype), x2)).T
  return matmul_t(g, a), da.astype(a.dtype)


matmul_narrow.defvjp(_narrow_fwd, _narrow_bwd)
