"""Rotary position embeddings, half-split (HF) layout, with linear and llama3 frequency scaling."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gemmax.ops.fused import rotate


def inverse_frequencies(head_dim: int, theta: float, scaling=None) -> np.ndarray:
  """[head_dim // 2] float32 inverse frequencies, computed in float32 like the reference."""
  exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
  inv = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
  if scaling is None or scaling.rope_type == "default":
    return inv
  if scaling.rope_type == "linear":
    return (inv / np.float32(scaling.factor)).astype(np.float32)
  # llama3: long wavelengths divided by `factor`, short ones kept, a smooth blend in between.
  factor = np.float32(scaling.factor)
  low, high = np.float32(scaling.low_freq_factor), np.float32(scaling.high_freq_factor)
  old_len = np.float32(scaling.original_max_position_embeddings)
  wavelen = np.float32(2 * math.pi) / inv
  scaled = np.where(wavelen > old_len / low, inv / factor, inv)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """x: [B, T, heads, head_dim]; positions: [B, T]. Rotates pairs (i, i + head_dim/2)
  (gemmax.ops.reference.rotate, with a backward that rotates back: gemmax.ops.fused)."""
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, T, H/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  return rotate(x, jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype))
