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

`dpo_loss_fn` makes the trainer's objective of it: sequence log-probabilities through the
chunked head (gemmax.train.logps), the reference being the model with its adapters switched off
(LoRA/DoRA) or a frozen copy's scores carried by the batch (full fine-tuning, `ReferenceScores`).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemmax.errors import ConfigError, GemmaxError
from gemmax.peft import adapters_disabled, has_adapters
from gemmax.schema import above, between, check_fields, one_of
from gemmax.train.logps import logp_objective, sequence_logps, token_logps

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


# --- the training objective --------------------------------------------------------------------

RULES = {
  "beta": above(0),
  "loss_type": one_of(*LOSS_TYPES),
  "label_smoothing": between(0, 0.5, high_open=True),
}


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  """beta: strength of the KL anchor to the reference; loss_type and label_smoothing: see
  `dpo_loss`."""

  beta: float = 0.1
  loss_type: str = "sigmoid"
  label_smoothing: float = 0.0

  def validate(self):
    return check_fields(self, RULES, "dpo.")


class DPOSums(NamedTuple):
  """Sums over pairs; the trainer logs each as a per-pair mean (`correct` as accuracy: the
  share of pairs whose chosen reward is higher; `logps_accuracy`: the share whose chosen
  completion is the more likely under the policy itself, meaningful before training too, when
  every reward is 0)."""

  loss_sum: jax.Array
  correct: jax.Array
  count: jax.Array
  chosen_rewards_sum: jax.Array
  rejected_rewards_sum: jax.Array
  margins_sum: jax.Array
  chosen_logps_sum: jax.Array
  rejected_logps_sum: jax.Array
  logps_accuracy_sum: jax.Array

  count_name = "pairs"


def _flat(batch):
  """[B, 2, T] pair arrays -> [2B, T] rows (chosen, rejected, chosen, ...)."""
  return {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items() if k != "ref_logps"}


def pair_logps(model, batch, *, chunk=None) -> jax.Array:
  """[B, 2] sequence log-probabilities of each pair's chosen and rejected completion (no
  gradient): the scored tokens' log p summed per row."""
  rows = _flat(batch)
  h = model.hidden_states(
    rows["input_ids"], positions=rows.get("positions"), segment_ids=rows.get("segment_ids")
  )
  lp = token_logps(h, model.output_head(), rows["targets"], rows["loss_mask"], chunk=chunk)
  return sequence_logps(lp, rows["loss_mask"]).reshape(-1, 2)


def reference_logps(model, batch, *, chunk=None) -> jax.Array:
  """The reference's [B, 2] log-probabilities: `batch["ref_logps"]` when the data carries them
  (a frozen copy scored them, see `ReferenceScores`), else the model itself with its adapters
  switched off -- the base it was adapted from, without a second copy of the weights."""
  if "ref_logps" in batch:
    return jnp.asarray(batch["ref_logps"], jnp.float32)
  if not has_adapters(model):
    raise GemmaxError(
      "DPO without adapters needs the reference's log-probabilities in the batch "
      "('ref_logps': wrap the data in gemmax.train.dpo.ReferenceScores)"
    )
  with adapters_disabled(model):
    return jax.lax.stop_gradient(pair_logps(model, batch, chunk=chunk))


def dpo_loss_fn(config: DPOConfig):
  """loss_fn(model, batch, chunk=) -> DPOSums for gemmax.train.Trainer / make_train_step, on
  batches of gemmax.data.preference_batches ([B, 2, T]; micro-batches split whole pairs)."""
  config.validate()

  def loss_fn(model, batch, *, chunk=None) -> DPOSums:
    ref = reference_logps(model, batch, chunk=chunk)
    rows = _flat(batch)
    h = model.hidden_states(
      rows["input_ids"], positions=rows.get("positions"), segment_ids=rows.get("segment_ids")
    )
    mask = rows["loss_mask"]
    lengths = jnp.sum(mask != 0, axis=-1).reshape(-1, 2)

    def objective(lp):
      seq = sequence_logps(lp, mask).reshape(-1, 2)
      losses, m = dpo_loss(
        seq[:, 0],
        seq[:, 1],
        ref[:, 0],
        ref[:, 1],
        beta=config.beta,
        loss_type=config.loss_type,
        label_smoothing=config.label_smoothing,
        chosen_lengths=lengths[:, 0],
        rejected_lengths=lengths[:, 1],
      )
      return jnp.sum(losses), (m, seq)

    loss_sum, (m, seq) = logp_objective(
      h, model.output_head(), rows["targets"], mask, objective, chunk=chunk
    )
    sg, total = jax.lax.stop_gradient, lambda x: jnp.sum(jax.lax.stop_gradient(x))
    return DPOSums(
      loss_sum,
      total(m["accuracies"]),
      jnp.asarray(seq.shape[0], jnp.float32),
      total(m["chosen_rewards"]),
      total(m["rejected_rewards"]),
      total(m["margins"]),
      total(sg(seq[:, 0])),
      total(sg(seq[:, 1])),
      total((sg(seq[:, 0]) > sg(seq[:, 1])).astype(jnp.float32)),
    )

  return loss_fn


class ReferenceScores:
  """Iterator wrapper for full fine-tuning: adds `ref_logps` [B, 2] to every batch, scored by a
  frozen copy of `model` as it is now (made here; the trained model's buffers are donated and
  change, the copy's do not). With adapters the model is its own reference: don't wrap."""

  def __init__(self, data, model, *, chunk=None):
    self.data = data
    graphdef, state = nnx.split(model)
    self._state = jax.tree.map(jnp.copy, state)  # a real copy: the trainer donates the originals
    self._score = jax.jit(lambda s, b: pair_logps(nnx.merge(graphdef, s), b, chunk=chunk))

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self.data)
    return dict(batch, ref_logps=np.asarray(self._score(self._state, batch)))

  def wrap(self, data) -> "ReferenceScores":
    """The same frozen reference over other batches (the held-out ones): no second copy."""
    other = copy.copy(self)
    other.data = data
    return other

  def get_state(self):
    return self.data.get_state() if hasattr(self.data, "get_state") else None

  def set_state(self, state) -> None:
    if state is not None:
      self.data.set_state(state)
