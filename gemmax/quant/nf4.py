"""NF4 4-bit weights (QLoRA): bitsandbytes' NormalFloat-4 codebook, blocks of 64, double-quantised
absmax, dequantised on the fly in the forward.

Layout follows bitsandbytes: the weight W [out, in] (the transpose of a gemmax kernel) is flattened
row-major and cut into blocks of 64 values; each block stores 4-bit codes (two per uint8, the first
value in the high nibble) and one absmax. The absmax vector is itself quantised ("double quant"):
its mean is subtracted, then it is cut into blocks of 256 that are scaled by their own float32
absmax and stored as 8-bit indices into bitsandbytes' signed dynamic map. Storage per parameter:
4 + 8/64 + 32/(64*256) ≈ 4.127 bits.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from flax import nnx

from gemmax.ops.matmul import matmul_t

BLOCK = 64
ABSMAX_BLOCK = 256

# bitsandbytes NF4 data type (csrc kernels' lookup table), index = 4-bit code.
NF4_CODE = np.array(
  [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
  ],
  dtype=np.float32,
)


def dynamic_map() -> np.ndarray:
  """bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(signed=True, 7, 8)): 256 sorted
  values in [-1, 1]; exponent 10^-6..10^0 with 2^i linear fraction steps at exponent i."""
  data = []
  for i in range(7):
    bounds = np.linspace(0.1, 1.0, 2**i + 1)
    means = (bounds[:-1] + bounds[1:]) / 2.0
    data += list(10.0 ** (i - 6) * means) + list(-(10.0 ** (i - 6)) * means)
  data += [0.0, 1.0]
  assert len(data) == 256
  return np.sort(np.asarray(data, dtype=np.float32))


DYNAMIC_MAP = dynamic_map()


class NF4Data(nnx.Variable):
  """Packed NF4 storage (codes, quantised absmax, scales). Not trainable: not an nnx.Param."""


def _nearest(x: jax.Array, table: np.ndarray) -> jax.Array:
  """Index of the nearest value of the sorted `table` for each entry of x (x in table's range)."""
  mids = jnp.asarray((table[1:] + table[:-1]) / 2.0)
  return jnp.searchsorted(mids, x, side="left").astype(jnp.uint8)


def _blocks(flat: jax.Array, size: int) -> jax.Array:
  pad = -flat.shape[0] % size
  return jnp.pad(flat, (0, pad)).reshape(-1, size)


def quantize(w: jax.Array) -> dict[str, jax.Array]:
  """W [out, in] (any float dtype) -> {codes uint8 [n/2], absmax_q uint8 [n/64],
  absmax_scale f32 [n/64/256], absmax_offset f32 []} (sizes rounded up to whole blocks)."""
  blocks = _blocks(jnp.asarray(w, jnp.float32).reshape(-1), BLOCK)  # [nb, 64]
  absmax = jnp.max(jnp.abs(blocks), axis=1)  # [nb]
  safe = jnp.where(absmax == 0, 1.0, absmax)
  codes = _nearest(blocks / safe[:, None], NF4_CODE).reshape(-1, 2)
  packed = (codes[:, 0] << 4) | codes[:, 1]
  # Double quant: centre the absmax vector, then 8-bit dynamic-map codes per block of 256.
  offset = jnp.mean(absmax)
  centred = _blocks(absmax - offset, ABSMAX_BLOCK)  # [nb2, 256]
  scale = jnp.max(jnp.abs(centred), axis=1)
  scale = jnp.where(scale == 0, 1.0, scale)
  q_absmax = _nearest(centred / scale[:, None], DYNAMIC_MAP).reshape(-1)[: absmax.shape[0]]
  return {
    "codes": packed.astype(jnp.uint8),
    "absmax_q": q_absmax,
    "absmax_scale": scale.astype(jnp.float32),
    "absmax_offset": offset.astype(jnp.float32),
  }


def dequantize_absmax(absmax_q, absmax_scale, absmax_offset) -> jax.Array:
  """The per-block absmax [n/64] in float32, as recovered from the double quantisation."""
  nb = absmax_q.shape[0]
  vals = jnp.asarray(DYNAMIC_MAP)[absmax_q.astype(jnp.int32)]
  scale = jnp.repeat(absmax_scale, ABSMAX_BLOCK)[:nb]
  return vals * scale + absmax_offset


def dequantize(q: dict, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
  """Inverse of `quantize`: -> W [out, in] in `dtype`."""
  packed = q["codes"]
  idx = jnp.stack([packed >> 4, packed & 0xF], axis=-1).reshape(-1, BLOCK).astype(jnp.int32)
  absmax = dequantize_absmax(q["absmax_q"], q["absmax_scale"], q["absmax_offset"])
  vals = jnp.asarray(NF4_CODE)[idx] * absmax[:, None]
  n = shape[0] * shape[1]
  return vals.reshape(-1)[:n].reshape(shape).astype(dtype)


class NF4Linear(nnx.Module):
  """A frozen 4-bit Linear: y = x @ W.T with W [out, in] dequantised from NF4 in `dtype`.

  `axes` are the logical axes of the original kernel [in, out]; the flat code/absmax arrays are
  row-major over `out`, so they carry the out axis name.
  """

  def __init__(self, kernel: jax.Array, *, axes, dtype, param_dtype=None):
    self.in_features, self.out_features = int(kernel.shape[0]), int(kernel.shape[1])
    self.dtype = dtype
    self.param_dtype = jnp.dtype(param_dtype or kernel.dtype).name
    self.axes = tuple(axes) if axes is not None else (None, None)
    q = quantize(jnp.asarray(kernel).T)
    out_axis = self.axes[1]
    self.codes = NF4Data(q["codes"], axes=(out_axis,))
    self.absmax_q = NF4Data(q["absmax_q"], axes=(out_axis,))
    self.absmax_scale = NF4Data(q["absmax_scale"], axes=(None,))
    self.absmax_offset = NF4Data(q["absmax_offset"], axes=())

  def arrays(self) -> dict[str, jax.Array]:
    return {
      k: getattr(self, k)[...] for k in ("codes", "absmax_q", "absmax_scale", "absmax_offset")
    }

  def weight(self, dtype=None) -> jax.Array:
    """Dequantised W [out, in] (bitsandbytes orientation)."""
    return dequantize(self.arrays(), (self.out_features, self.in_features), dtype or self.dtype)

  def kernel_value(self, dtype=jnp.float32) -> jax.Array:
    """Dequantised kernel [in, out] (gemmax orientation)."""
    return self.weight(dtype).T

  def __call__(self, x: jax.Array, out_dtype=None) -> jax.Array:
    w = self.weight(self.dtype)
    return matmul_t(x.astype(self.dtype), w, preferred_element_type=out_dtype)

  def nbytes(self) -> int:
    return int(sum(a.nbytes for a in self.arrays().values()))
