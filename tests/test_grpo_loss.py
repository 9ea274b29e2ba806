"""gemmax.train.grpo_loss / group_advantages against TRL's GRPOTrainer: its `_compute_loss` run on
the same per-token log-probabilities (the model replaced by them) for the loss, the gradient with
respect to the policy's log-probs, the KL and the clip fractions; advantages against TRL's group
normalisation (torch, with trl's own nanstd)."""

import types

import jax
import numpy as np
import pytest
import torch
import trl

from gemmax.errors import ConfigError
from gemmax.train import group_advantages, grpo_loss


B, T, G = 6, 9, 3


def _data(seed=0):
  rng = np.random.RandomState(seed)
  mask = np.zeros((B, T), np.float32)
  for i in range(B):
    mask[i, : rng.randint(1, T + 1)] = 1  # completions end at EOS, padding after
  old = -rng.gamma(2.0, 0.6, (B, T)).astype(np.float32)
  logps = old + rng.normal(0, 0.25, (B, T)).astype(np.float32)  # a few ratios leave [0.8, 1.2]
  ref = old + rng.normal(0, 0.3, (B, T)).astype(np.float32)
  adv = rng.normal(0, 1, B).astype(np.float32)
  return logps, old, ref, adv, mask


def _trl(loss_type, beta, eps_low, eps_high, logps, old, ref, adv, mask):
  policy = torch.tensor(logps, requires_grad=True)

  class Metrics(dict):
    def __missing__(self, key):
      self[key] = []
      return self[key]

  metrics = {"train": Metrics()}
  this = types.SimpleNamespace(
    model=types.SimpleNamespace(training=True),
    accelerator=types.SimpleNamespace(
      gather=lambda x: x, reduce=lambda x, reduction: x, num_processes=1
    ),
    _get_per_token_logps_and_entropies=lambda *a, **k: (policy, torch.zeros(B, T), None),
    aux_loss_enabled=False,
    top_entropy_quantile=1.0,
    off_policy_mask_threshold=None,
    importance_sampling_level="token",
    beta=beta,
    args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None),
    loss_type=loss_type,
    epsilon_low=eps_low,
    epsilon_high=eps_high,
    current_gradient_accumulation_steps=1,
    max_completion_length=T,
    _entropy_bonus_enabled=False,
    use_vllm=False,
    _metrics=metrics,
  )
  inputs = {
    "prompt_ids": torch.zeros(B, 2, dtype=torch.long),
    "prompt_mask": torch.ones(B, 2, dtype=torch.long),
    "completion_ids": torch.zeros(B, T, dtype=torch.long),
    "completion_mask": torch.tensor(mask),
    "advantages": torch.tensor(adv),
    "old_per_token_logps": torch.tensor(old),
    "ref_per_token_logps": torch.tensor(ref),
  }
  loss = trl.GRPOTrainer._compute_loss(this, None, inputs)
  loss.backward()
  return float(loss), policy.grad.numpy(), {k: v[-1] for k, v in metrics["train"].items()}


@pytest.mark.parametrize(
  "loss_type,beta,eps_low,eps_high",
  [
    ("grpo", 0.04, 0.2, 0.2),
    ("grpo", 0.0, 0.2, 0.28),
    ("bnpo", 0.1, 0.1, 0.3),
    ("dr_grpo", 0.04, 0.2, 0.2),
  ],
)
def test_loss_equals_trl(loss_type, beta, eps_low, eps_high):
  logps, old, ref, adv, mask = _data()
  want, want_grad, logged = _trl(loss_type, beta, eps_low, eps_high, logps, old, ref, adv, mask)

  def f(lp):
    return grpo_loss(
      lp,
      old,
      ref,
      adv,
      mask,
      beta=beta,
      epsilon_low=eps_low,
      epsilon_high=eps_high,
      loss_type=loss_type,
      max_completion_length=T,
    )

  (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(logps)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-7)
  assert 0 < float(metrics["clip_region"]) < 1  # the data clips some tokens, not all
  for ours, theirs in [
    ("clip_low", "clip_ratio/low_mean"),
    ("clip_high", "clip_ratio/high_mean"),
    ("clip_region", "clip_ratio/region_mean"),
  ] + ([("kl", "kl")] if beta else []):
    np.testing.assert_allclose(float(metrics[ours]), logged[theirs], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_equal_trl_normalisation(scale):
  from trl.trainer.utils import nanstd

  rewards = np.array([1.0, 0.0, 0.5, 2.0, 2.0, 2.0, 0.0, 1.0, 0.0], np.float32)
  r = torch.tensor(rewards)
  mean = r.view(-1, G).mean(1).repeat_interleave(G)
  std = nanstd(r.view(-1, G), dim=1).repeat_interleave(G) if scale == "group" else nanstd(r)
  want = (r - mean) if scale == "none" else (r - mean) / (std + 1e-4)
  got = group_advantages(rewards, G, scale=scale)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-6, atol=1e-7)
  if scale == "group":
    assert np.all(np.asarray(got)[3:6] == 0)  # a group of equal rewards teaches nothing


def test_bad_settings_are_config_errors():
  z = np.zeros((2, 3), np.float32)
  with pytest.raises(ConfigError, match="not whole groups of 4"):
    group_advantages(np.zeros(6), 4)
  with pytest.raises(ConfigError, match="loss_type must be one of grpo"):
    grpo_loss(z, z, z, np.zeros(2), z, beta=0.0, loss_type="ppo")
  with pytest.raises(ConfigError, match="dr_grpo needs max_completion_length"):
    grpo_loss(z, z, z, np.zeros(2), z, beta=0.0, loss_type="dr_grpo")
  with pytest.raises(ConfigError, match="beta must be >= 0"):
    grpo_loss(z, z, z, np.zeros(2), z, beta=-1.0)
