"""gemmax.train.dpo_loss against TRL's DPOTrainer (the loss code of its `_compute_loss`, run on the
same per-token log-probabilities): losses, rewards, margins, accuracies and the gradients with
respect to the policy's log-probabilities, for every loss type."""

import re
import types

import jax
import numpy as np
import pytest
import torch
import trl

from gemmax.errors import ConfigError
from gemmax.train import dpo_loss


B, T = 5, 7


def _data(seed=0):
  rng = np.random.RandomState(seed)
  mask = np.zeros((2 * B, T + 1), np.int64)  # [chosen; rejected] rows, completion tokens only
  for i in range(2 * B):
    start = rng.randint(1, 4)
    mask[i, start : start + rng.randint(1, T + 1 - start)] = 1
  token_logps = -rng.gamma(2.0, 0.7, (2 * B, T)).astype(np.float32) * mask[:, 1:]
  ref = -rng.gamma(2.0, 8.0, (2 * B,)).astype(np.float32)
  return mask, token_logps, ref


def _trl(loss_type, beta, label_smoothing, mask, token_logps, ref):
  """TRL's DPO loss and logged metrics on given log-probabilities: `_compute_loss` with the model
  replaced by its outputs (per-token log-probs; precomputed reference log-probs)."""
  log_probs = torch.tensor(token_logps, requires_grad=True)
  n = log_probs.shape[0]
  outputs = types.SimpleNamespace(
    log_probs=log_probs,
    entropy=torch.zeros(n, T),
    mean_logits=torch.zeros(n, T),
    is_top1=torch.zeros(n, T, dtype=torch.bool),
  )

  class Metrics(dict):
    def __missing__(self, key):
      self[key] = []
      return self[key]

  metrics = {"train": Metrics()}
  acc = types.SimpleNamespace(
    device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x, unwrap_model=lambda m: m
  )
  this = types.SimpleNamespace(
    model=types.SimpleNamespace(training=True),
    accelerator=acc,
    aux_loss_enabled=False,
    ld_alpha=None,
    precompute_ref_logps=True,
    f_divergence_type="reverse_kl",
    loss_types=[loss_type],
    loss_weights=[1.0],
    beta=beta,
    label_smoothing=label_smoothing,
    use_weighting=False,
    _metrics=metrics,
    _total_train_tokens=0,
    _tp_size=1,
  )
  inputs = {
    "input_ids": torch.zeros(n, T + 1, dtype=torch.long),
    "attention_mask": torch.ones(n, T + 1, dtype=torch.long),
    "completion_mask": torch.tensor(mask),
    "ref_chosen_logps": torch.tensor(ref[:B]),
    "ref_rejected_logps": torch.tensor(ref[B:]),
  }
  loss = trl.DPOTrainer._compute_loss(this, lambda **kw: outputs, inputs, False)
  loss.backward()
  m = metrics["train"]
  return float(loss), log_probs.grad.numpy(), {k: v[-1] for k, v in m.items()}


@pytest.mark.parametrize(
  "loss_type,beta,eps",
  [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.0), ("robust", 0.1, 0.2), ("ipo", 0.3, 0.0)],
)
def test_equals_trl(loss_type, beta, eps):
  mask, token_logps, ref = _data()
  ref_loss, ref_grad, logged = _trl(loss_type, beta, eps, mask, token_logps, ref)
  lengths = mask[:, 1:].sum(1)

  def mean_loss(tl):
    logps = tl.sum(1)
    losses, out = dpo_loss(
      logps[:B],
      logps[B:],
      ref[:B],
      ref[B:],
      beta=beta,
      loss_type=loss_type,
      label_smoothing=eps,
      chosen_lengths=lengths[:B],
      rejected_lengths=lengths[B:],
    )
    return losses.mean(), out

  (loss, out), grad = jax.value_and_grad(mean_loss, has_aux=True)(token_logps)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  m = mask[:, 1:]  # TRL sums every position; the masked ones hold 0 here
  np.testing.assert_allclose(np.asarray(grad) * m, ref_grad * m, rtol=1e-5, atol=1e-7)
  for ours, theirs in [
    ("chosen_rewards", "rewards/chosen"),
    ("rejected_rewards", "rewards/rejected"),
    ("margins", "rewards/margins"),
    ("accuracies", "rewards/accuracies"),
  ]:
    np.testing.assert_allclose(float(np.mean(out[ours])), logged[theirs], rtol=1e-5, atol=1e-7)


def test_label_smoothing_is_conservative_dpo_and_zero_is_the_paper():
  """sigmoid with e: the flipped-label mixture -(1-e) log s(bd) - e log s(-bd); TRL 1.x dropped
  label smoothing from its sigmoid loss, so this is checked against the formula."""
  d = np.array([-2.0, 0.0, 3.0], np.float32)
  zeros = np.zeros(3, np.float32)
  log_sig = lambda x: -np.log1p(np.exp(-x))  # noqa: E731
  for eps in (0.0, 0.1):
    losses, _ = dpo_loss(d, zeros, zeros, zeros, beta=0.5, label_smoothing=eps)
    want = -(1 - eps) * log_sig(0.5 * d) - eps * log_sig(-0.5 * d)
    np.testing.assert_allclose(np.asarray(losses), want, rtol=1e-6)


@pytest.mark.parametrize(
  "kw,needle",
  [
    (dict(beta=0.0), "beta must be > 0"),
    (dict(beta=0.1, loss_type="hinge"), "loss_type must be one of sigmoid|ipo|robust"),
    (dict(beta=0.1, label_smoothing=0.5), "label_smoothing must be in [0, 0.5)"),
  ],
)
def test_bad_settings_are_config_errors(kw, needle):
  z = np.zeros(2, np.float32)
  with pytest.raises(ConfigError, match=re.escape(needle)):
    dpo_loss(z, z, z, z, **kw)
