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

from gemmax.train.losses import CESums, model_loss_sums


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


def _loss_sums(graphdef, params, rest, batch, rng, chunk):
  model = _merge(graphdef, params, rest, rng)
  s = model_loss_sums(model, batch, chunk=chunk)
  return s.loss_sum, s


def _metrics(s: CESums, grads, params) -> dict:
  count = jnp.maximum(s.count, 1.0)
  return {"loss": s.loss_sum / count, "accuracy": s.correct / count, "tokens": s.count,
          "grad_norm": optax.global_norm(grads)}


def make_train_step(train_def, optimizer: optax.GradientTransformation, *, accum_steps: int = 1,
                    loss_chunk: int | None = None, donate: bool = True) -> Callable:
  """`step(params, opt_state, rest, batch, rng) -> (params, opt_state, metrics)`, jitted.

  batch: dict of [B, T] arrays (input_ids, targets, loss_mask, positions, segment_ids). With
  `accum_steps` A > 1 the batch is split into A micro-batches of B / A rows whose CE sums and
  gradients are added up in a scan, then divided once by the total number of scored tokens.
  """
  if accum_steps < 1:
    raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
  grad_fn = jax.grad(lambda p, r, b, k: _loss_sums(train_def, p, r, b, k, loss_chunk),
                     has_aux=True)

  def step(params, opt_state, rest, batch, rng):
    if accum_steps == 1:
      grads, s = grad_fn(params, rest, batch, rng)
    else:
      rows = next(iter(batch.values())).shape[0]
      if rows % accum_steps:
        raise ValueError(f"batch of {rows} rows does not split into {accum_steps} micro-batches")
      micro = jax.tree.map(lambda x: x.reshape(accum_steps, rows // accum_steps, *x.shape[1:]),
                           batch)

      def body(carry, xs):
        i, mb = xs
        g, s = grad_fn(params, rest, mb, jax.random.fold_in(rng, i))
        acc_g, acc_s = carry
        return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_s, s)), None

      zeros = jax.tree.map(jnp.zeros_like, params)
      zero = jnp.zeros((), jnp.float32)
      (grads, s), _ = jax.lax.scan(body, (zeros, CESums(zero, zero, zero)),
                                   (jnp.arange(accum_steps), micro))
    # Gradient of the masked mean = gradient of the CE sum / number of scored tokens.
    count = jnp.maximum(s.count, 1.0)
    grads = jax.tree.map(lambda g: (g / count).astype(g.dtype), grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, _metrics(s, grads, params)

  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def make_eval_step(eval_def, *, loss_chunk: int | None = None) -> Callable:
  """`eval_step(params, rest, batch) -> CESums` (dropout off); sum these over an eval set."""

  def eval_step(params, rest, batch):
    return _loss_sums(eval_def, params, rest, batch, None, loss_chunk)[1]

  return jax.jit(eval_step)
