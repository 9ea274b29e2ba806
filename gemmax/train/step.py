"""The jitted train and eval steps: pure functions over (trainable params, opt state, frozen state).

The model is split once with `nnx.split(model, trainable, ...)`: `params` (what gets gradients
and optimizer state: LoRA/DoRA parameters when adapters exist, else every nnx.Param) and `rest`
(the frozen base, quantized weights, RNG state). `rest` is passed to every step unchanged and is
never donated or copied; `params` and `opt_state` are donated so updates reuse their buffers.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gemmax.errors import GemmaxError
from gemmax.train.losses import model_loss_sums


def trainable_filter(model):
  """gemmax.peft's filter (adapters only when present), or every nnx.Param without peft."""
  try:
    from gemmax.peft import trainable_filter as peft_filter
  except ImportError:
    return nnx.Param
  return peft_filter(model)


class SplitModel(NamedTuple):
  """graphdefs for training (dropout on) and eval (dropout off), trainable params, the rest."""

  train_def: object
  eval_def: object
  params: nnx.State
  rest: nnx.State


def split_model(model, trainable=None) -> SplitModel:
  """Split `model` into trainable params and everything else (see module docstring)."""
  trainable = trainable if trainable is not None else trainable_filter(model)
  model.eval()
  eval_def, _, _ = nnx.split(model, trainable, ...)
  model.train()
  train_def, params, rest = nnx.split(model, trainable, ...)
  return SplitModel(train_def, eval_def, params, rest)


def _merge(graphdef, params, rest, rng=None):
  model = nnx.merge(graphdef, params, rest, copy=True)
  if rng is not None:
    # Dropout streams (if any) are reseeded from the step's key: randomness is a function of
    # (seed, step, micro-batch), and the RNG counters in `rest` never need to be written back.
    nnx.reseed(model, dropout=rng)
  return model


def _loss_sums(graphdef, params, rest, batch, rng, chunk, loss_fn=None):
  model = _merge(graphdef, params, rest, rng)
  s = (loss_fn or model_loss_sums)(model, batch, chunk=chunk)
  return s.loss_sum, s


def per_token_metrics(s) -> dict:
  """A sums tuple (CESums or any NamedTuple with loss_sum, correct, count, ...) -> means per
  counted item: loss_sum -> loss, correct -> accuracy, <x>_sum -> x, and count -> tokens (or
  the tuple's `count_name`, e.g. pairs)."""
  count = max(s.count, 1.0) if isinstance(s.count, float) else jnp.maximum(s.count, 1.0)
  out = {}
  for name, value in zip(s._fields, s):
    if name == "count":
      out[getattr(s, "count_name", "tokens")] = value
    else:
      out["accuracy" if name == "correct" else name.removesuffix("_sum")] = value / count
  return out


def _metrics(s, grad_norm, finite) -> dict:
  return {
    **per_token_metrics(s),
    "grad_norm": grad_norm,
    "nonfinite": 1.0 - finite.astype(jnp.float32),
  }


def make_train_step(
  train_def,
  optimizer: optax.GradientTransformation,
  *,
  accum_steps: int = 1,
  loss_chunk: int | None = None,
  donate: bool = True,
  loss_fn: Callable | None = None,
) -> Callable:
  """`step(params, opt_state, rest, batch, rng) -> (params, opt_state, metrics)`, jitted.

  batch: dict of [B, T] arrays (input_ids, targets, loss_mask, positions, segment_ids). With
  `accum_steps` A > 1 the batch is split into A micro-batches of B / A rows whose CE sums and
  gradients are added up in a scan, then divided once by the total number of scored tokens.
  metrics["nonfinite"] is 1.0 when the loss or a gradient was NaN/Inf: that update is skipped
  (params and optimizer state come back unchanged).
  loss_fn(model, batch, chunk=) -> sums tuple (default `model_loss_sums`: CE); a custom one
  (e.g. gemmax.distill's) returns a NamedTuple whose first field `loss_sum` is optimised.
  """
  if accum_steps < 1:
    raise GemmaxError(f"accum_steps must be >= 1, got {accum_steps}")
  grad_fn = jax.grad(
    lambda p, r, b, k: _loss_sums(train_def, p, r, b, k, loss_chunk, loss_fn), has_aux=True
  )

  def step(params, opt_state, rest, batch, rng):
    if accum_steps == 1:
      grads, s = grad_fn(params, rest, batch, rng)
    else:
      rows = next(iter(batch.values())).shape[0]
      if rows % accum_steps:
        raise GemmaxError(f"batch of {rows} rows does not split into {accum_steps} micro-batches")
      micro = jax.tree.map(
        lambda x: x.reshape(accum_steps, rows // accum_steps, *x.shape[1:]), batch
      )

      def body(carry, xs):
        i, mb = xs
        g, s = grad_fn(params, rest, mb, jax.random.fold_in(rng, i))
        acc_g, acc_s = carry
        return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_s, s)), None

      zeros = jax.tree.map(jnp.zeros_like, params)
      first = jax.tree.map(lambda x: x[0], micro)
      sums = jax.eval_shape(lambda: grad_fn(params, rest, first, rng)[1])
      zero_sums = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), sums)
      (grads, s), _ = jax.lax.scan(body, (zeros, zero_sums), (jnp.arange(accum_steps), micro))
    # Gradient of the masked mean = gradient of the CE sum / number of scored tokens.
    count = jnp.maximum(s.count, 1.0)
    grads = jax.tree.map(lambda g: (g / count).astype(g.dtype), grads)
    grad_norm = optax.global_norm(grads)
    # A NaN/Inf loss or gradient anywhere makes the norm non-finite: keep the old params and
    # optimizer state (its step count too), so one bad batch cannot poison the run.
    finite = jnp.isfinite(s.loss_sum) & jnp.isfinite(grad_norm)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    return keep(new_params, params), keep(new_opt_state, opt_state), _metrics(s, grad_norm, finite)

  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def make_eval_step(
  eval_def, *, loss_chunk: int | None = None, loss_fn: Callable | None = None
) -> Callable:
  """`eval_step(params, rest, batch) -> CESums` (or loss_fn's sums; dropout off); sum these over
  an eval set."""

  def eval_step(params, rest, batch):
    return _loss_sums(eval_def, params, rest, batch, None, loss_chunk, loss_fn)[1]

  return jax.jit(eval_step)
