"""Decode layout: plain Linear kernels transposed to [out, in] for the sampler's jitted functions.

Decoding multiplies a few rows by every weight; on XLA:CPU that is 2x faster with the weight
stored [out, in] (see `gemmax.models.layers.matmul_t`). The sampler transposes the kernels once
per `generate` call (`to_out_in`, a copy of those weights for the call's duration) and, inside
each jitted function, marks the merged modules (`mark_out_in`), so the model code and the user's
model stay as they are. Adapted projections (a LoRA/DoRA `base`) and NF4 layers keep their
layout: DoRA reads its base kernel as [in, out].
"""
from __future__ import annotations

import functools

import jax
from flax import nnx

from gemmax.models.layers import Linear


def decode_linears(model) -> list:
  """The plain Linear modules of `model` that are not the base of an adapter."""
  return [m for path, m in nnx.iter_graph(model)
          if type(m) is Linear and path and path[-1] != "base"]


def use_out_in(batch: int, setting=None) -> bool:
  """Whether to decode with [out, in] kernels: `setting` if given, else on CPU for batch > 1
  (a single row gains nothing and the copy would only cost memory)."""
  if setting is not None:
    return bool(setting)
  return batch > 1 and jax.default_backend() == "cpu"


@functools.partial(jax.jit, static_argnames=("graphdef",))
def to_out_in(state, *, graphdef):
  """The model state with every `decode_linears` kernel transposed to [out, in]."""
  model = nnx.merge(graphdef, state)
  for m in decode_linears(model):
    m.kernel.set_value(m.kernel[...].T)
  return nnx.state(model)


def mark_out_in(model):
  """Inside a jitted function: tell the merged modules their kernels are [out, in]."""
  for m in decode_linears(model):
    m.kernel_layout = "out_in"
  return model
