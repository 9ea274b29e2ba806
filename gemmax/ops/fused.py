"""Elementwise ops of the model with hand-written backward passes, for XLA:CPU.

Each equals its plain version in gemmax.ops.reference in values; the gradients are autodiff's up to
rounding. Why they exist, measured on XLA:CPU:

- `gated`: autodiff of act(gate) * up saves act's float32 intermediates (a [tokens, mlp] f32 array
  per layer written and read back) and spreads the gradient over more passes; a bf16 chain of jnp
  ops also ran 3x slower than the float32 expression rounded once.
- `rotate` (RoPE): autodiff transposes the halves' slices and concatenation into pads and adds,
  which XLA:CPU fuses with the attention gradient's layout change into one scalar loop 3-5x slower
  than the forward. The rotation's transpose is the rotation by -angle.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gemmax.ops.reference import gated as _gated_value
from gemmax.ops.reference import rotate as _rotate_value
from gemmax.ops.reference import rotate_half


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gated(act, gate: jax.Array, up: jax.Array) -> jax.Array:
  """act(gate) * up in float32, rounded once to gate's dtype; the backward keeps only `gate` and
  `up` and recomputes act."""
  return _gated_value(act, gate, up)


def _gated_fwd(act, gate, up):
  return gated(act, gate, up), (gate, up)


def _gated_bwd(act, res, d_out):
  # The first barrier stops XLA from merging the recomputed act with the forward's (CSE), which
  # would store it in float32 after all. The second gives d_up its own copy of the inputs, so
  # each gradient recomputes act in its own pass: with one shared act (or tanh), XLA wrote it out
  # as a [tokens, mlp] float32 array for the two passes to read back (5% of a bf16 LoRA step).
  gate, up, d_out = jax.lax.optimization_barrier((*res, d_out))
  gate2, d_out2 = jax.lax.optimization_barrier((gate, d_out))
  f32 = jnp.promote_types(gate.dtype, jnp.float32)
  _, act_vjp = jax.vjp(act, gate.astype(f32))
  d_gate = act_vjp(d_out.astype(f32) * up.astype(f32))[0].astype(gate.dtype)
  d_up = (d_out2.astype(f32) * act(gate2.astype(f32))).astype(up.dtype)
  return d_gate, d_up


gated.defvjp(_gated_fwd, _gated_bwd)


@jax.custom_vjp
def rotate(x, cos, sin):
  """x * cos + rotate_half(x) * sin; the backward rotates by -angle."""
  return _rotate_value(x, cos, sin)


def _rotate_fwd(x, cos, sin):
  return rotate(x, cos, sin), (cos, sin)


def _rotate_bwd(res, dy):
  cos, sin = res
  return dy * cos - rotate_half(dy) * sin, None, None  # cos, sin come from integer positions


rotate.defvjp(_rotate_fwd, _rotate_bwd)
