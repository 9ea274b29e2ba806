"""Products of a few rows with a weight stored [out, in] (the decode layout), in the forms that
XLA:CPU streams fastest. `gemmax.models.layers.matmul_t` hands its few-row products here.

Decoding multiplies 1-8 rows by every weight, so a step is bounded by reading the weights. Which
form of the product reads them fastest depends on the dtype, measured here on the 30-layer,
576-wide SmolLM2-135M weight set (269-538 MB per token; benchmarks/RESULTS.md, "Real model"):

- `wt @ x^T` (the weight as the left operand, streamed once): float32 19 GB/s at one row, 13 GB/s
  at eight, where `x @ w` re-packed the weight (2-5 GB/s at eight rows).
- bf16 / f16, one to three rows: XLA:CPU upcasts a one-row low-precision product to float32 and
  converts the whole weight every call (1.8 GB/s alone). Padded with zero rows to four (behind a
  barrier, so the pad is a buffer of its own), `wt @ x^T` runs as a native bf16 dot: 16 GB/s.

Zero rows add nothing to the real rows' sums, so every form gives the same values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gemmax.ops.common import is_low_precision

# Up to this many rows the product takes one of the forms above (see `few_rows_product`).
FEW_ROWS = 64
# Low-precision products of fewer rows are padded with zero rows up to this many.
PAD_ROWS = 4


def _weight_left(dot, x, wt, preferred_element_type):
  """(wt @ x^T)^T; the barrier stops XLA from folding it back into x @ wt^T."""
  return jax.lax.optimization_barrier(
    dot(wt, x, w_t=True, preferred_element_type=preferred_element_type)
  ).T


def few_rows_product(dot, x: jax.Array, wt: jax.Array, preferred_element_type=None) -> jax.Array:
  """x [m, in] @ wt [out, in]^T -> [m, out] for m <= FEW_ROWS, with `dot(a, b, w_t=True, ...)`
  the 2-D product (gemmax.models.layers.dot2d: bf16 operands accumulate in float32)."""
  m = x.shape[0]
  if m >= PAD_ROWS or not is_low_precision(x, wt):
    return _weight_left(dot, x, wt, preferred_element_type)
  padded = jax.lax.optimization_barrier(
    jnp.concatenate([x, jnp.zeros((PAD_ROWS - m, x.shape[1]), x.dtype)])
  )
  return _weight_left(dot, padded, wt, preferred_element_type)[:m]
