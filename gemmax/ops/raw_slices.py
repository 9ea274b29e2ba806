"""Dynamic slices and updates of bf16/f16 buffers that move the bits as unsigned integers.

Why: XLA:CPU has no bf16 dynamic-slice / dynamic-update-slice / scatter of its own. It converts
the whole buffer to float32, slices or updates that, and converts back, so writing one token into
a bf16 KV cache copied the cache twice per layer and step, and so did every block the decode
attention read (bf16 SmolLM2-135M at batch 8: ~11 of a 36 ms decode step). The same operations on
a uint16 view are native and stay in place; a same-width bitcast changes no value on any backend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _raw(x: jax.Array):
  """(x as unsigned ints, the dtype to bitcast back to), or (x, None) for 32-bit and wider."""
  if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype.itemsize >= 4:
    return x, None
  return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")), x.dtype


def _back(x: jax.Array, dtype) -> jax.Array:
  return x if dtype is None else jax.lax.bitcast_convert_type(x, dtype)


def dynamic_slice_in_dim(x: jax.Array, start, size: int, axis: int) -> jax.Array:
  """`jax.lax.dynamic_slice_in_dim`, bit for bit."""
  raw, dtype = _raw(x)
  return _back(jax.lax.dynamic_slice_in_dim(raw, start, size, axis=axis), dtype)


def dynamic_update_slice(x: jax.Array, update: jax.Array, at) -> jax.Array:
  """`jax.lax.dynamic_update_slice(x, update.astype(x.dtype), at)`, bit for bit."""
  raw, dtype = _raw(x)
  return _back(jax.lax.dynamic_update_slice(raw, _raw(update.astype(x.dtype))[0], at), dtype)


def set_at(x: jax.Array, index, update: jax.Array) -> jax.Array:
  """`x.at[index].set(update.astype(x.dtype))`, bit for bit."""
  raw, dtype = _raw(x)
  return _back(raw.at[index].set(_raw(update.astype(x.dtype))[0]), dtype)
