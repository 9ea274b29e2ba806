"""Decode layout: a copy of the model whose plain projections hold their kernels as [out, in].

Decoding multiplies a few rows by every weight; on XLA:CPU that streams the weights fastest with
each weight stored [out, in] (`gemmax.ops.matmul.matmul_t`). The sampler makes the copy once
(`to_out_in`) and runs its jitted functions on it, so the model code and the user's model stay as
they are. The copy is a transform of the weights it holds, not a
flag: every plain `Linear` becomes an `OutInLinear`, and the projections that read one input
(q/k/v, gate/up: `PACKED`) become `PackedProjection`s sharing one stacked kernel, which
`project_shared` multiplies once. Fewer, wider products matter at this size: XLA:CPU pays tens of
microseconds per library dot, and a one-row bf16 chain of the 30-layer, 576-wide SmolLM2 ran
1.1x faster in float32 and 1.7x faster at batch 8 in bf16 with 4 products per layer instead of 7.
Adapted projections (a LoRA/DoRA `base`) and NF4 layers keep their layout: DoRA reads its base
kernel as [in, out].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemmax.models.layers import Linear
from gemmax.ops.matmul import matmul_t

# Projections of one input, by attribute name, packed into one [sum of outs, in] kernel.
PACKED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class OutInLinear(nnx.Module):
  """`Linear` with its kernel stored [out, in]: y = x @ kernel^T, computed in `dtype`."""

  out_in = True  # read by Transformer.output_projection

  def __init__(self, linear: Linear):
    self.in_features, self.out_features = linear.in_features, linear.out_features
    self.dtype = linear.dtype
    axes = linear.kernel.get_metadata().get("axes")
    self.kernel = nnx.Param(linear.kernel[...].T, axes=axes[::-1] if axes else None)

  def __call__(self, x: jax.Array, out_dtype=None) -> jax.Array:
    return matmul_t(
      x.astype(self.dtype), self.kernel[...].astype(self.dtype), preferred_element_type=out_dtype
    )


class PackedProjection(nnx.Module):
  """Rows [start, stop) of a `packed` [out, in] kernel that several projections of one input
  share; `shared_input` multiplies the whole kernel once and splits the result."""

  def __init__(self, packed: nnx.Param, start: int, stop: int, dtype):
    self.packed, self.start, self.stop, self.dtype = packed, start, stop, dtype

  def __call__(self, x: jax.Array, out_dtype=None) -> jax.Array:
    w = self.packed[...][self.start : self.stop]  # alone: a slice of the kernel
    return matmul_t(x.astype(self.dtype), w.astype(self.dtype), preferred_element_type=out_dtype)

  @staticmethod
  def shared_input(mods, x: jax.Array) -> tuple:
    first = mods[0]
    whole = (
      all(m.packed is first.packed and m.dtype == first.dtype for m in mods)
      and [m.start for m in mods] == [0] + [m.stop for m in mods[:-1]]
      and mods[-1].stop == first.packed.shape[0]
    )
    if not whole:
      return tuple(m(x) for m in mods)
    y = matmul_t(x.astype(first.dtype), first.packed[...].astype(first.dtype))
    return tuple(y[..., m.start : m.stop] for m in mods)


def decode_linears(model) -> list:
  """The plain Linear modules of `model` that are not the base of an adapter."""
  return [
    m for path, m in nnx.iter_graph(model) if type(m) is Linear and path and path[-1] != "base"
  ]


def use_out_in(batch: int, setting=None, dtype="float32") -> bool:
  """Whether to decode on the [out, in] copy: `setting` if given, else on CPU for batch > 1 or
  a bf16/f16 compute `dtype` (gemmax.ops.matmul: one float32 row gains little from the copy,
  while a one-row bf16 product in the [in, out] layout converts every weight to float32)."""
  if setting is not None:
    return bool(setting)
  low = jnp.dtype(dtype).itemsize < 4
  return (batch > 1 or low) and jax.default_backend() == "cpu"


def _pack(group: list) -> list:
  """PackedProjections over one [sum of outs, in] kernel for `group`, a list of Linears."""
  kernel = jnp.concatenate([m.kernel[...].T for m in group], axis=0)
  axes = group[0].kernel.get_metadata().get("axes")
  packed = nnx.Param(kernel, axes=axes[::-1] if axes else None)
  ends = np.cumsum([m.out_features for m in group]).tolist()
  return [PackedProjection(packed, e - m.out_features, e, m.dtype) for m, e in zip(group, ends)]


def to_out_in(model) -> tuple:
  """(graphdef, state) of the decode copy of `model` (see the module docstring). The copy shares
  every array it does not transpose with `model`; `model` itself is not changed."""
  copy = nnx.merge(*nnx.split(model))  # new module objects over the same arrays
  targets = {id(m) for m in decode_linears(copy)}
  for _, parent in list(nnx.iter_graph(copy)):
    if not isinstance(parent, nnx.Module):
      continue
    names = [n for n, v in vars(parent).items() if id(v) in targets]
    for group in PACKED:
      if all(n in names for n in group):
        for n, new in zip(group, _pack([getattr(parent, n) for n in group])):
          setattr(parent, n, new)
        names = [n for n in names if n not in group]
    for n in names:
      setattr(parent, n, OutInLinear(getattr(parent, n)))
  return nnx.split(copy)
