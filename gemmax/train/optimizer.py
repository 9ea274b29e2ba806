"""AdamW with warmup + cosine decay, global-norm clipping, weight decay on matrices only."""

from __future__ import annotations

import dataclasses

import jax
import optax

from gemmax.schema import above, at_least, between, check_fields


# The ranges of the fields (experiments/schemas.py checks a recipe's optimizer keys by them).
RULES = {
  "learning_rate": above(0),
  "warmup_steps": at_least(0),
  "steps": above(0),
  "end_lr_fraction": between(0, 1),
  "b1": between(0, 1, high_open=True),
  "b2": between(0, 1, high_open=True),
  "weight_decay": at_least(0),
}


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
    return check_fields(self, RULES, "optimizer.")


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
