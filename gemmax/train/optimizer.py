"""AdamW with warmup + cosine decay, global-norm clipping, weight decay on matrices only."""

from __future__ import annotations

import dataclasses

import jax
import optax

from gemmax.errors import GemmaxError


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """What a recipe sets. `steps` counts optimizer updates (after gradient accumulation)."""

  learning_rate: float = 2e-4
  warmup_steps: int = 10
  steps: int = 1000
  end_lr_fraction: float = 0.0  # cosine decays to learning_rate * end_lr_fraction
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float | None = 1.0  # global-norm clipping; None or 0 turns it off

  def validate(self):
    if not self.learning_rate > 0:
      raise GemmaxError(f"optimizer.learning_rate must be > 0, got {self.learning_rate}")
    if self.steps <= 0:
      raise GemmaxError(f"optimizer.steps must be > 0, got {self.steps}")
    if self.warmup_steps < 0:
      raise GemmaxError(f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}")
    if self.weight_decay < 0:
      raise GemmaxError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
    return self


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine decay to peak * end_lr_fraction at `steps`."""
  warmup = min(cfg.warmup_steps, cfg.steps)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=cfg.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(cfg.steps, warmup + 1),
    end_value=cfg.learning_rate * cfg.end_lr_fraction,
  )


def decay_mask(params):
  """True for matrices (ndim >= 2); norms, biases, DoRA magnitudes and scalars are not decayed."""
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  cfg.validate()
  parts = []
  if cfg.clip_norm:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  parts.append(
    optax.adamw(
      learning_rate_schedule(cfg),
      b1=cfg.b1,
      b2=cfg.b2,
      eps=cfg.eps,
      weight_decay=cfg.weight_decay,
      mask=decay_mask,
    )
  )
  return optax.chain(*parts)
