"""Model surgery: wrap projections with LoRA/DoRA, quantise bases to NF4, merge adapters back."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gemmax.errors import GemmaxError
from gemmax.models.layers import Linear
from gemmax.peft.lora import LoRALinear, base_axes, has_adapters
from gemmax.quant.nf4 import NF4Linear
from gemmax.peft.targets import iter_modules, select, set_module

METHODS = ("lora", "dora")


def _to_nf4(base):
  if isinstance(base, NF4Linear):
    return base
  return NF4Linear(base.kernel[...], axes=base_axes(base), dtype=base.dtype)


def apply(
  model,
  method: str = "lora",
  rank: int = 8,
  alpha: float = 16,
  targets="all-linear",
  dropout: float = 0.0,
  rslora: bool = False,
  quantize=None,
  rngs: nnx.Rngs | None = None,
):
  """Replaces the targeted Linear layers of `model` in place with LoRA/DoRA adapters.

  targets: "all-linear" (q/k/v/o/gate/up/down, not lm_head), a list of names matched as peft
  does ("q_proj" or "layers.0.self_attn.q_proj"), or a regex fullmatching the module name.
  quantize="nf4" stores each targeted base in NF4 (QLoRA / QDoRA). rngs (default nnx.Rngs(0))
  draws A and the dropout masks. Returns the model.
  """
  if method not in METHODS:
    raise GemmaxError(f"peft method {method!r} is not one of {METHODS}")
  if quantize not in (None, "nf4"):
    raise GemmaxError(f"quantize {quantize!r} is not supported (None or 'nf4')")
  if has_adapters(model):
    raise GemmaxError("model already has adapters; merge(model) first or load into a fresh model")
  rngs = rngs if rngs is not None else nnx.Rngs(0)
  chosen = select(model, targets)
  for name, base in chosen:  # check every layer before changing any
    if rank > min(base.in_features, base.out_features):
      raise GemmaxError(
        f"LoRA rank {rank} exceeds min(in, out) = "
        f"{min(base.in_features, base.out_features)} of layer {name} "
        f"[{base.in_features}x{base.out_features}]"
      )
  for name, base in chosen:
    if quantize == "nf4":
      base = _to_nf4(base)
    set_module(
      model,
      name,
      LoRALinear(
        base,
        rank=rank,
        alpha=alpha,
        dora=method == "dora",
        dropout=dropout,
        rslora=rslora,
        rngs=rngs,
      ),
    )
  return model


def quantize_model(model, targets="all-linear"):
  """Stores the targeted Linear layers (and the bases of adapters) in NF4, in place."""
  for name, mod in list(iter_modules(model, LoRALinear)):
    mod.base = _to_nf4(mod.base)
  for name, mod in select(model, targets):
    if isinstance(mod, Linear) and not name.endswith(".base"):
      set_module(model, name, _to_nf4(mod))
  return model


def _plain_linear(kernel: jax.Array, *, axes, dtype, param_dtype) -> Linear:
  lin = nnx.eval_shape(
    lambda: Linear(
      kernel.shape[0],
      kernel.shape[1],
      axes=axes,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=nnx.Rngs(0),
    )
  )
  lin.kernel.set_value(kernel.astype(param_dtype))
  return lin


def merge(model):
  """Folds every adapter into a plain Linear (NF4 bases are dequantised first) and turns any
  remaining NF4Linear back into a Linear; in place. Returns the model."""
  for name, mod in list(iter_modules(model, LoRALinear)):
    base = mod.base
    pdt = base.param_dtype if isinstance(base, NF4Linear) else base.kernel[...].dtype
    set_module(
      model,
      name,
      _plain_linear(
        mod.merged_kernel(), axes=base_axes(base), dtype=base.dtype, param_dtype=jnp.dtype(pdt)
      ),
    )
  for name, mod in list(iter_modules(model, NF4Linear)):
    set_module(
      model,
      name,
      _plain_linear(
        mod.kernel_value(jnp.float32),
        axes=mod.axes,
        dtype=mod.dtype,
        param_dtype=jnp.dtype(mod.param_dtype),
      ),
    )
  return model
