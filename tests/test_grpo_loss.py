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


# --- grpo_loss_fn: the trainer objective on a LoRA model vs a dense transcription ---------------
def _lora_model():
  from flax import nnx

  from gemmax import peft
  from gemmax.models import ModelConfig, Transformer
  from gemmax.train.step import split_model

  cfg = ModelConfig.preset("gemma2-tiny", num_hidden_layers=2, vocab_size=64, dtype="float32")
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  peft.apply(model, rank=4, alpha=8.0, rngs=nnx.Rngs(1))
  split = split_model(model)
  leaves, tree = jax.tree.flatten(split.params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  # lora_B starts at 0 (policy == reference): move every adapter weight off its init
  params = jax.tree.unflatten(
    tree, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  )
  return split.eval_def, params, split.rest


def _completions_batch(n=4, t=12, seed=0):
  """Fixed prompts + completions: row r has a prompt of p_r tokens and a completion after it."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(1, 64, (n, t + 1)).astype(np.int32)
  mask = np.zeros((n, t), np.int32)
  seg = np.zeros((n, t), np.int32)
  for r in range(n):
    p, c = rng.randint(2, 5), rng.randint(1, 7)
    mask[r, p - 1 : p - 1 + c] = 1
    seg[r, : p - 1 + c] = 1
  return {
    "input_ids": ids[:, :-1] * seg,
    "targets": ids[:, 1:] * seg,
    "loss_mask": mask,
    "positions": np.tile(np.arange(t, dtype=np.int32), (n, 1)) * seg,
    "segment_ids": seg,
    "advantages": rng.normal(0, 1, n).astype(np.float32),
  }


def _dense_objective(model, batch, loss_type, beta, eps_low, eps_high, max_len):
  """DeepSeekMath's GRPO objective as TRL computes it, transcribed over full logits."""
  import jax.numpy as jnp

  from gemmax.peft import adapters_disabled

  def logps(m):
    logits = m(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(lp, batch["targets"][..., None], axis=-1)[..., 0]

  lp = logps(model)
  with adapters_disabled(model):
    ref = jax.lax.stop_gradient(logps(model))
  mask = batch["loss_mask"].astype(jnp.float32)
  a = batch["advantages"][:, None]
  ratio = jnp.exp(lp - jax.lax.stop_gradient(lp))  # one update per batch: pi_old = pi, detached
  surrogate = jnp.minimum(ratio * a, jnp.clip(ratio, 1 - eps_low, 1 + eps_high) * a)
  kl = jnp.exp(ref - lp) - (ref - lp) - 1
  per_token = -(surrogate - beta * kl)
  if loss_type == "grpo":  # mean over each completion's tokens, then over completions
    loss = jnp.mean(jnp.sum(per_token * mask, 1) / jnp.sum(mask, 1))
  elif loss_type == "bnpo":  # mean over the batch's completion tokens
    loss = jnp.sum(per_token * mask) / jnp.sum(mask)
  else:  # dr_grpo: sum / (completions x max completion length)
    loss = jnp.sum(per_token * mask) / (mask.shape[0] * max_len)
  return loss, jnp.sum(kl * mask) / jnp.sum(mask)


@pytest.mark.parametrize(
  "loss_type,beta,eps_high", [("grpo", 0.04, None), ("bnpo", 0.1, 0.28), ("dr_grpo", 0.5, None)]
)
def test_trainer_objective_equals_dense_grpo_with_lora(loss_type, beta, eps_high):
  from flax import nnx

  from gemmax.train.grpo import GRPOConfig, grpo_loss_fn

  graphdef, params, rest = _lora_model()
  batch = _completions_batch()
  n, max_len = batch["input_ids"].shape[0], 6
  cfg = GRPOConfig(beta=beta, epsilon_high=eps_high, loss_type=loss_type, max_completion_length=6)
  loss_fn = grpo_loss_fn(cfg)

  def ours(p):
    s = loss_fn(nnx.merge(graphdef, p, rest), batch, chunk=8)  # several head chunks
    return s.loss_sum / n, s

  def dense(p):
    return _dense_objective(
      nnx.merge(graphdef, p, rest), batch, loss_type, beta, 0.2, eps_high or 0.2, max_len
    )

  (got, sums), g_ours = jax.value_and_grad(ours, has_aux=True)(params)
  (want, kl), g_dense = jax.value_and_grad(dense, has_aux=True)(params)
  assert float(kl) > 1e-4  # the adapters move the policy off the reference
  np.testing.assert_allclose(float(got), float(want), rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(float(sums.kl_sum / sums.count), float(kl), rtol=2e-5)
  assert float(sums.completion_length_sum) == batch["loss_mask"].sum()
  flat_a, flat_b = jax.tree.leaves(g_ours), jax.tree.leaves(g_dense)
  assert len(flat_a) == len(flat_b) > 0
  assert max(float(np.abs(b).max()) for b in flat_b) > 1e-4  # a real gradient
  for a, b in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
