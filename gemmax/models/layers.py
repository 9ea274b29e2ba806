"""Building blocks: Linear, Embed, RMSNorm (both families' variants) and the gated MLP."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from gemmax.ops.fused import gated
from gemmax.ops.matmul import matmul, matmul_t

_init = nnx.initializers.normal(stddev=0.02)


class Linear(nnx.Module):
  """y = x @ kernel, kernel [in, out] stored in param_dtype, computed in `dtype`.

  `axes` are the logical axis names of the kernel (see gemmax.sharding). The sampler's decode copy
  replaces these modules with [out, in] ones (gemmax.sampling.layout).
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    axes: tuple[str, str],
    dtype,
    param_dtype,
    rngs: nnx.Rngs,
  ):
    self.in_features, self.out_features = in_features, out_features
    self.dtype = dtype
    self.kernel = nnx.Param(
      _init(rngs.params(), (in_features, out_features), param_dtype), axes=axes
    )

  def __call__(self, x: jax.Array, out_dtype=None) -> jax.Array:
    """`out_dtype` (default `dtype`): float32 hands an adapter the unrounded accumulator."""
    return matmul(
      x.astype(self.dtype), self.kernel[...].astype(self.dtype), preferred_element_type=out_dtype
    )


def project_shared(mods, x: jax.Array) -> tuple:
  """`tuple(m(x) for m in mods)` for projections of one input (q/k/v, gate/up). A module class
  may define `shared_input(mods, x)` to share work between them: LoRA adapters take their
  down-projections as one product."""
  share = getattr(type(mods[0]), "shared_input", None)
  if share is not None and all(type(m) is type(mods[0]) for m in mods):
    return share(mods, x)
  return tuple(m(x) for m in mods)


class Embed(nnx.Module):
  """Token embedding [vocab, hidden]; `attend` is the tied output projection."""

  def __init__(self, vocab_size: int, hidden_size: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    self.embedding = nnx.Param(
      _init(rngs.params(), (vocab_size, hidden_size), param_dtype), axes=("vocab", "embed")
    )

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, h: jax.Array) -> jax.Array:
    """[..., hidden] -> [..., vocab] logits in float32."""
    return matmul_t(h, self.embedding[...].astype(h.dtype), preferred_element_type=jnp.float32)


class RMSNorm(nnx.Module):
  """RMSNorm computed in float32.

  offset (Gemma): y = x / rms(x) * (1 + w), cast at the end (weights stored as offsets from 1).
  else (Llama):   y = w * cast(x / rms(x)), cast before the scale.
  """

  def __init__(self, dim: int, *, eps: float, offset: bool, param_dtype):
    self.eps, self.offset = eps, offset
    init = jnp.zeros if offset else jnp.ones
    self.scale = nnx.Param(init((dim,), param_dtype), axes=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    w = self.scale[...]
    if self.offset:
      return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w.astype(x.dtype) * y.astype(x.dtype)


_GELU_TANH = functools.partial(jax.nn.gelu, approximate=True)
# The MLP activations by their HF names (ModelConfig accepts exactly these).
ACTIVATIONS = {
  "gelu_pytorch_tanh": _GELU_TANH,
  "gelu_tanh": _GELU_TANH,
  "gelu_new": _GELU_TANH,
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "gelu": functools.partial(jax.nn.gelu, approximate=False),
}


def activation(name: str):
  """The MLP activation as a float32 function."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unsupported hidden activation {name!r}")
  return ACTIVATIONS[name]


class MLP(nnx.Module):
  """Gated MLP: down(act(gate(x)) * up(x)) — GeGLU(tanh) for Gemma, SwiGLU for Llama."""

  def __init__(self, config, *, dtype, param_dtype, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = Linear(d, f, axes=("embed", "mlp"), **kw)
    self.up_proj = Linear(d, f, axes=("embed", "mlp"), **kw)
    self.down_proj = Linear(f, d, axes=("mlp", "embed"), **kw)
    self.act = activation(config.hidden_activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(gated(self.act, *project_shared((self.gate_proj, self.up_proj), x)))
