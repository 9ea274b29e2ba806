"""LoRA and DoRA adapters around a frozen Linear (or NF4Linear) base, with HF peft semantics.

LoRA:  y = base(x) + s * B(A(dropout(x))),  s = alpha / r  (alpha / sqrt(r) with rsLoRA).
DoRA:  with V = W + s*BA and g = m / ||V||_col (norm per output feature, no gradient through it),
       y = base(x) + (g - 1) * base(x') + g * s * B(A(x')),  x' = dropout(x)  (peft's forward;
       computed as g * (base(x) + s * B(A(x))) when there is no dropout, equal up to rounding).
A is [in, r] (peft's lora_A.weight transposed), B is [r, out]; both float32 LoRAParams.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemmax.errors import GemmaxError
from gemmax.ops.matmul import matmul, matmul_narrow
from gemmax.quant.nf4 import NF4Linear


class LoRAParam(nnx.Param):
  """A trainable adapter parameter (LoRA A/B, DoRA magnitude); always float32."""


def base_kernel(base, dtype=jnp.float32) -> jax.Array:
  """The base weight as a kernel [in, out] (dequantised for NF4)."""
  if isinstance(base, NF4Linear):
    return base.kernel_value(dtype)
  return base.kernel[...].astype(dtype)


def base_axes(base) -> tuple:
  if isinstance(base, NF4Linear):
    return base.axes
  return tuple(base.kernel.get_metadata().get("axes") or (None, None))


class LoRALinear(nnx.Module):
  """An adapted projection: `base` (frozen Linear | NF4Linear) plus lora_a, lora_b [, magnitude]."""

  def __init__(
    self,
    base,
    *,
    rank: int,
    alpha: float,
    dora: bool = False,
    dropout: float = 0.0,
    rslora: bool = False,
    rngs: nnx.Rngs,
  ):
    d_in, d_out = base.in_features, base.out_features
    if not isinstance(rank, int) or rank < 1:
      raise GemmaxError(f"LoRA rank must be a positive integer, got {rank!r}")
    if rank > min(d_in, d_out):
      raise GemmaxError(
        f"LoRA rank {rank} exceeds min(in_features, out_features) = "
        f"{min(d_in, d_out)} of a {d_in}x{d_out} layer"
      )
    if not 0.0 <= dropout < 1.0:
      raise GemmaxError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    self.base = base
    self.in_features, self.out_features, self.dtype = d_in, d_out, base.dtype
    self.rank, self.alpha, self.rslora, self.use_dora = rank, float(alpha), bool(rslora), bool(dora)
    self.scaling = self.alpha / (math.sqrt(rank) if rslora else rank)
    in_axis, out_axis = base_axes(base)
    # peft default: kaiming_uniform_(a=sqrt(5)) on A [r, in] -> U(-1/sqrt(in), 1/sqrt(in)).
    bound = 1.0 / math.sqrt(d_in)
    self.lora_a = LoRAParam(
      jax.random.uniform(rngs.params(), (d_in, rank), jnp.float32, -bound, bound),
      axes=(in_axis, None),
    )
    self.lora_b = LoRAParam(jnp.zeros((rank, d_out), jnp.float32), axes=(None, out_axis))
    if self.use_dora:
      self.magnitude = LoRAParam(self.weight_norm(), axes=(out_axis,))
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
    self.disabled = False  # True inside `adapters_disabled`: the layer is its base

  def delta(self) -> jax.Array:
    """s * A @ B: the [in, out] update, float32."""
    return (self.lora_a[...] @ self.lora_b[...]) * self.scaling

  def weight_norm(self) -> jax.Array:
    """||W + s*BA|| per output feature [out], float32, as a constant for autodiff."""
    v = base_kernel(self.base) + self.delta()
    return jax.lax.stop_gradient(jnp.sqrt(jnp.sum(v * v, axis=0)))

  def __call__(self, x: jax.Array, *, down=None) -> jax.Array:
    """`down`: the down-projection dropout(x) @ A, if already computed (see `shared_input`)."""
    dt = self.dtype
    if self.disabled:
      return self.base(x)
    # The base and adapter products are summed from their float32 accumulators and rounded
    # once: one full-width pass, where rounding each product first cost two more (and kept both
    # rounded arrays alive for the backward).
    acc = jnp.promote_types(dt, jnp.float32)
    y = self.base(x, out_dtype=acc)
    drop = self.dropout_active()
    xd = self.dropout(x) if drop else x
    if down is None:
      down = matmul_narrow(xd.astype(dt), self.lora_a[...].astype(dt))
    # s scales the rank-r activations rather than the [tokens, out] product: one pass over a
    # 16-wide array instead of a full-width one (equal up to rounding).
    lora = matmul(
      down * jnp.asarray(self.scaling, dt), self.lora_b[...].astype(dt), preferred_element_type=acc
    )
    if not self.use_dora:
      return (y + lora).astype(dt)
    g = self.magnitude[...] / self.weight_norm()
    if not drop:  # peft's y + (g - 1) * y + g * lora, in two elementwise ops instead of five
      return (g * (y + lora)).astype(dt)
    return (y + (g - 1) * self.base(xd, out_dtype=acc) + g * lora).astype(dt)

  def dropout_active(self) -> bool:
    return self.dropout is not None and not self.dropout.deterministic

  @staticmethod
  def shared_input(mods, x: jax.Array) -> tuple:
    """Adapted projections of one input x (q/k/v, gate/up), their down-projections taken as one
    product x @ [A_1 | A_2 | ...]: x is read once, and autodiff's input gradient for them is one
    product too, where separate rank-16 products each wrote a [tokens, in] float32 array.
    With adapter dropout (an independent mask per adapter) each adapter projects on its own."""
    dt = mods[0].dtype
    if len(mods) < 2 or any(m.dropout_active() or m.disabled or m.dtype != dt for m in mods):
      return tuple(m(x) for m in mods)
    down = matmul_narrow(x.astype(dt), jnp.concatenate([m.lora_a[...] for m in mods], 1).astype(dt))
    ends = np.cumsum([m.rank for m in mods])
    return tuple(m(x, down=down[..., e - m.rank : e]) for m, e in zip(mods, ends))

  def merged_kernel(self) -> jax.Array:
    """The plain kernel [in, out] (float32) this adapter is equivalent to."""
    v = base_kernel(self.base) + self.delta()
    if self.use_dora:
      v = v * (self.magnitude[...] / self.weight_norm())[None, :]
    return v


@contextlib.contextmanager
def adapters_disabled(model):
  """Within the block every LoRA/DoRA layer of `model` computes its base alone: the model is
  its own reference (DPO, GRPO) with no second copy of the weights. Works inside jit."""
  mods = [m for _, m in nnx.iter_graph(model) if isinstance(m, LoRALinear)]
  if not mods:
    raise GemmaxError("adapters_disabled: the model has no LoRA/DoRA adapters")
  for m in mods:
    m.disabled = True
  try:
    yield model
  finally:
    for m in mods:
      m.disabled = False


def has_adapters(model) -> bool:
  return any(isinstance(n, LoRALinear) for _, n in nnx.iter_graph(model))


def trainable_filter(model):
  """What the optimizer trains: LoRAParam when the model has adapters, else every nnx.Param."""
  return LoRAParam if has_adapters(model) else nnx.Param
