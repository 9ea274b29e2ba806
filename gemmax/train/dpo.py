"""Direct preference optimisation (Rafailov et al., 2023): the loss on sequence log-probabilities.

With policy log-ratios r_c = log pi(y_c|x) - log pi_ref(y_c|x) and r_r likewise for the rejected
completion, and delta = r_c - r_r:

  sigmoid  -(1 - e) log sigmoid(beta delta) - e log sigmoid(-beta delta)   the paper's loss; with
           label smoothing e > 0, the conservative DPO of Mitchell (2023): preferences flipped with
           probability e
  robust   (-(1 - e) log sigmoid(beta delta) + e log sigmoid(-beta delta)) / (1 - 2e)   the unbiased
           estimator for noisy preferences (Chowdhury et al., 2024)
  ipo      (delta' - 1 / (2 beta))^2   IPO (Azar et al., 2023), on per-token log-ratios delta' when
           the completions' lengths are given, as TRL computes it

The implicit rewards are beta * r_c and beta * r_r. Everything is float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gemmax.errors import ConfigError

LOSS_TYPES = ("sigmoid", "ipo", "robust")


def dpo_loss(
  chosen_logps: jax.Array,
  rejected_logps: jax.Array,
  ref_chosen_logps: jax.Array,
  ref_rejected_logps: jax.Array,
  *,
  beta: float,
  loss_type: str = "sigmoid",
  label_smoothing: float = 0.0,
  chosen_lengths: jax.Array | None = None,
  rejected_lengths: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
  """Per-pair losses [B] and a dict of per-pair `chosen_rewards`, `rejected_rewards`, `margins`
  (their difference) and `accuracies` (1.0 where the chosen reward is higher).

  All four log-probability arrays are [B] sums over each completion's tokens. `chosen_lengths`
  and `rejected_lengths` ([B] token counts) are used by "ipo" only, which then compares per-token
  log-ratios; without them it compares the sums.
  """
  if loss_type not in LOSS_TYPES:
    raise ConfigError(f"dpo loss_type must be one of {'|'.join(LOSS_TYPES)}, got {loss_type!r}")
  if not beta > 0:
    raise ConfigError(f"dpo beta must be > 0, got {beta}")
  if not 0.0 <= label_smoothing < 0.5:
    raise ConfigError(f"dpo label_smoothing must be in [0, 0.5), got {label_smoothing}")
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  chosen_ratio = f32(chosen_logps) - f32(ref_chosen_logps)
  rejected_ratio = f32(rejected_logps) - f32(ref_rejected_logps)
  delta = chosen_ratio - rejected_ratio
  eps = label_smoothing
  if loss_type == "sigmoid":
    losses = -(1 - eps) * jax.nn.log_sigmoid(beta * delta) - eps * jax.nn.log_sigmoid(-beta * delta)
  elif loss_type == "robust":
    clean = -(1 - eps) * jax.nn.log_sigmoid(beta * delta)
    flipped = eps * jax.nn.log_sigmoid(-beta * delta)
    losses = (clean + flipped) / (1 - 2 * eps)
  else:
    if chosen_lengths is not None and rejected_lengths is not None:
      per_token = lambda r, n: r / jnp.maximum(f32(n), 1.0)  # noqa: E731
      delta = per_token(chosen_ratio, chosen_lengths) - per_token(rejected_ratio, rejected_lengths)
    losses = (delta - 1 / (2 * beta)) ** 2
  chosen_rewards = beta * jax.lax.stop_gradient(chosen_ratio)
  rejected_rewards = beta * jax.lax.stop_gradient(rejected_ratio)
  return losses, {
    "chosen_rewards": chosen_rewards,
    "rejected_rewards": rejected_rewards,
    "margins": chosen_rewards - rejected_rewards,
    "accuracies": (chosen_rewards > rejected_rewards).astype(jnp.float32),
  }
