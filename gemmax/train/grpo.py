"""Group relative policy optimisation (Shao et al., DeepSeekMath 2024): advantages and the loss.

G completions are sampled per prompt; each one's advantage is its reward minus its group's mean,
divided by the group's standard deviation (+1e-4). The loss per completion token t is

  -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A) + beta * KL_t,
  rho_t = pi(y_t) / pi_old(y_t),  KL_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1   (k3)

averaged over each completion's tokens and then over completions ("grpo", the paper's), over all
tokens of the batch ("bnpo"), or summed and divided by B x max completion length ("dr_grpo",
Dr. GRPO), as TRL defines them. pi_old is the policy that sampled (its log-probs are passed; with
one update per batch they equal the current ones, detached).

`grpo_loss_fn` makes the trainer's objective of it (per-token log-probabilities through the
chunked head, gemmax.train.logps; the reference is the model with its adapters switched off).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from gemmax.errors import ConfigError, GemmaxError
from gemmax.peft import adapters_disabled, has_adapters
from gemmax.schema import above, at_least, between, check_fields, one_of
from gemmax.train.logps import logp_objective, token_logps

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
SCALES = ("group", "batch", "none")


def _std(x: jax.Array, axis=None) -> jax.Array:
  """Standard deviation with Bessel's correction (as torch and TRL take it)."""
  n = x.size if axis is None else x.shape[axis]
  mean = jnp.mean(x, axis=axis, keepdims=True)
  var = jnp.sum((x - mean) ** 2, axis=axis, keepdims=True) / max(n - 1, 1)
  return jnp.sqrt(var)


def group_advantages(rewards: jax.Array, group_size: int, *, scale: str = "group") -> jax.Array:
  """[N] rewards of N = prompts x group_size completions (a prompt's completions adjacent) ->
  [N] advantages: reward - group mean, divided by the group's ("group"), the batch's ("batch")
  or no ("none") standard deviation plus 1e-4."""
  if scale not in SCALES:
    raise ConfigError(f"grpo scale_rewards must be one of {'|'.join(SCALES)}, got {scale!r}")
  r = jnp.asarray(rewards, jnp.float32)
  if group_size < 1 or r.shape[0] % group_size:
    raise ConfigError(f"{r.shape[0]} rewards are not whole groups of {group_size}")
  groups = r.reshape(-1, group_size)
  adv = (groups - groups.mean(1, keepdims=True)).reshape(-1)
  if scale == "group":
    std = _std(groups, axis=1) if group_size > 1 else jnp.zeros_like(groups[:, :1])
    adv = adv / (jnp.repeat(std[:, 0], group_size) + 1e-4)
  elif scale == "batch":
    adv = adv / (_std(r) + 1e-4).reshape(())
  return adv


def grpo_loss(
  logps: jax.Array,
  old_logps: jax.Array,
  ref_logps: jax.Array | None,
  advantages: jax.Array,
  mask: jax.Array,
  *,
  beta: float,
  epsilon_low: float = 0.2,
  epsilon_high: float | None = None,
  loss_type: str = "grpo",
  max_completion_length: int | None = None,
) -> tuple[jax.Array, dict]:
  """Scalar loss and metrics from per-token log-probs [B, T] of the completions under the policy
  (`logps`), the sampling policy (`old_logps`) and the reference (`ref_logps`, unused when beta
  is 0); `advantages` [B]; `mask` [B, T] is 1 on completion tokens.

  Metrics (means over completion tokens): `kl` (k3 estimate, when beta > 0), `clip_low`,
  `clip_high` and `clip_region` (fractions of tokens whose ratio is clipped against the sign of
  their advantage).
  """
  if loss_type not in LOSS_TYPES:
    raise ConfigError(f"grpo loss_type must be one of {'|'.join(LOSS_TYPES)}, got {loss_type!r}")
  if not beta >= 0:
    raise ConfigError(f"grpo beta must be >= 0, got {beta}")
  eps_low = epsilon_low
  eps_high = epsilon_low if epsilon_high is None else epsilon_high
  if not (0 < eps_low < 1 and eps_high > 0):
    raise ConfigError(f"grpo epsilon must be in (0, 1) (high > 0), got {eps_low}, {eps_high}")
  if loss_type == "dr_grpo" and not max_completion_length:
    raise ConfigError("grpo loss_type dr_grpo needs max_completion_length")
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  logps, old_logps, mask = f32(logps), f32(old_logps), f32(mask)
  adv = f32(advantages)[:, None]
  ratio = jnp.exp(logps - old_logps)
  clipped = jnp.clip(ratio, 1 - eps_low, 1 + eps_high)
  per_token = -jnp.minimum(ratio * adv, clipped * adv)
  metrics = {}
  tokens = jnp.maximum(mask.sum(), 1.0)
  if beta != 0.0:
    d = f32(ref_logps) - logps
    kl = jnp.exp(d) - d - 1
    per_token = per_token + beta * kl
    metrics["kl"] = jax.lax.stop_gradient((kl * mask).sum() / tokens)
  if loss_type == "grpo":
    loss = ((per_token * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)).mean()
  elif loss_type == "bnpo":
    loss = (per_token * mask).sum() / tokens
  else:
    loss = (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)
  ratio = jax.lax.stop_gradient(ratio)
  low = (ratio < 1 - eps_low) & (adv < 0)
  high = (ratio > 1 + eps_high) & (adv > 0)
  for name, hit in (("clip_low", low), ("clip_high", high), ("clip_region", low | high)):
    metrics[name] = (hit * mask).sum() / tokens
  return loss, metrics


# --- the training objective --------------------------------------------------------------------


def _epsilon_high(x) -> bool:
  return x is None or (isinstance(x, (int, float)) and x > 0)


RULES = {
  "beta": at_least(0),
  "epsilon": between(0, 1, low_open=True, high_open=True),
  "epsilon_high": (_epsilon_high, "None or > 0"),
  "loss_type": one_of(*LOSS_TYPES),
  "scale_rewards": one_of(*SCALES),
  "max_completion_length": above(0),
}


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """The objective's settings (see `grpo_loss`); max_completion_length also bounds sampling."""

  beta: float = 0.04  # KL coefficient (DeepSeekMath's); 0 drops the reference pass
  epsilon: float = 0.2
  epsilon_high: Optional[float] = None  # None: epsilon (DAPO's clip-higher when larger)
  loss_type: str = "grpo"
  scale_rewards: str = "group"
  max_completion_length: int = 64

  def validate(self):
    return check_fields(self, RULES, "grpo.")


class GRPOSums(NamedTuple):
  """Sums over completions; logged as per-completion means (kl and the clip fractions are
  already token means of the micro-batch, weighted by its completions)."""

  loss_sum: jax.Array
  count: jax.Array
  kl_sum: jax.Array
  clip_low_sum: jax.Array
  clip_high_sum: jax.Array
  clip_region_sum: jax.Array
  completion_length_sum: jax.Array

  count_name = "completions"


def grpo_loss_fn(config: GRPOConfig):
  """loss_fn(model, batch, chunk=) -> GRPOSums for gemmax.train.Trainer / make_train_step.

  batch: input_ids, targets, loss_mask (1 on completion tokens), positions, segment_ids [N, T];
  advantages [N]; optional old_logps [N, T] (the sampling policy's, when a batch is trained on
  more than once; else the current log-probs, detached) and ref_logps [N, T] (a frozen copy's;
  else the model with its adapters switched off is the reference)."""
  config.validate()

  def loss_fn(model, batch, *, chunk=None) -> GRPOSums:
    kw = dict(positions=batch.get("positions"), segment_ids=batch.get("segment_ids"))
    ids, targets, mask = batch["input_ids"], batch["targets"], batch["loss_mask"]
    ref = batch.get("ref_logps")
    if config.beta and ref is None:
      if not has_adapters(model):
        raise GemmaxError(
          "GRPO with beta > 0 and no adapters needs ref_logps in the batch (a frozen copy's)"
        )
      with adapters_disabled(model):
        ref = token_logps(model.hidden_states(ids, **kw), model.output_head(), targets, mask)
    h = model.hidden_states(ids, **kw)
    n = ids.shape[0]

    def objective(lp):
      old = batch["old_logps"] if "old_logps" in batch else jax.lax.stop_gradient(lp)
      loss, m = grpo_loss(
        lp,
        old,
        ref,
        batch["advantages"],
        mask,
        beta=config.beta,
        epsilon_low=config.epsilon,
        epsilon_high=config.epsilon_high,
        loss_type=config.loss_type,
        max_completion_length=config.max_completion_length,
      )
      return loss * n, m

    loss_sum, m = logp_objective(h, model.output_head(), targets, mask, objective, chunk=chunk)
    per = lambda x: jax.lax.stop_gradient(x) * n  # noqa: E731
    return GRPOSums(
      loss_sum,
      jnp.asarray(n, jnp.float32),
      per(m.get("kl", jnp.zeros(()))),
      per(m["clip_low"]),
      per(m["clip_high"]),
      per(m["clip_region"]),
      jnp.sum(mask != 0).astype(jnp.float32),
    )

  return loss_fn
