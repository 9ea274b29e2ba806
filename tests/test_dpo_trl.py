"""gemmax's DPO objective (gemmax.train.dpo.dpo_loss_fn: sequence log-probs through the chunked
head, the reference switched off or scored by a frozen copy) against TRL 1.16's DPOTrainer on a
tiny HF Llama: TRL's own fused-head forward of the policy and the reference and its `_compute_loss`
give the loss, rewards and, through torch autograd, the gradients; gemmax runs on its converted
copy (gemmax.convert.load_hf) and jax.grad. Full fine-tuning (the reference = the weights the run
started from) and LoRA (peft's adapter loaded into gemmax; reference = adapters off).

Also the compiled memory of the LoRA-DPO train step: it holds the base weights once, like the
plain SFT step of the same model."""

import copy
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import trl
from flax import nnx
from trl.trainer.utils import add_fused_lm_head

from gemmax import peft as gp
from gemmax.convert import load_hf
from gemmax.convert.hf import hf_name
from gemmax.train.dpo import DPOConfig, ReferenceScores, dpo_loss_fn
from gemmax.train.step import split_model
from hf_models import llama_config, make_hf_model, make_peft_model, save_hf_model

B, L = 3, 14  # pairs, padded length of prompt + completion
TRL_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


def _pairs(seed=0, vocab=256):
  """TRL's concatenated batch ([chosen; rejected] rows, right-padded) and gemmax's [B, 2, T]."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((2 * B, L), np.int64)
  attn = np.zeros((2 * B, L), np.int64)
  comp = np.zeros((2 * B, L), np.int64)
  for i in range(B):
    prompt = rng.integers(3, vocab, rng.integers(3, 7))
    for row in (i, B + i):  # chosen, rejected: the same prompt
      answer = rng.integers(3, vocab, rng.integers(1, L - len(prompt) + 1))
      seq = np.concatenate([prompt, answer])
      ids[row, : len(seq)], attn[row, : len(seq)] = seq, 1
      comp[row, len(prompt) : len(seq)] = 1
  trl_inputs = {
    "input_ids": torch.tensor(ids),
    "attention_mask": torch.tensor(attn),
    "completion_mask": torch.tensor(comp),
  }
  t = L - 1
  rows = {
    "input_ids": ids[:, :-1] * attn[:, :-1],
    "targets": ids[:, 1:] * attn[:, 1:],
    "loss_mask": comp[:, 1:],
    "positions": np.tile(np.arange(t), (2 * B, 1)) * attn[:, :-1],
    "segment_ids": attn[:, :-1],
  }
  # [2B, T] chosen-then-rejected -> [B, 2, T] pairs
  batch = {k: np.stack([v[:B], v[B:]], 1).astype(np.int32) for k, v in rows.items()}
  return trl_inputs, batch


def _trl(policy, ref_model, inputs, beta, loss_type="sigmoid"):
  """TRL's DPO loss (its `_compute_loss`, reference log-probs computed in the step), the logged
  metrics and the gradients of the policy's trainable parameters."""

  class Metrics(dict):
    def __missing__(self, key):
      self[key] = []
      return self[key]

  metrics = {"train": Metrics(), "eval": Metrics()}
  acc = types.SimpleNamespace(
    device="cpu",
    gather_for_metrics=lambda x: x,
    gather=lambda x: x,
    unwrap_model=lambda m: m,
    autocast=lambda: torch.autocast("cpu", enabled=False),
  )
  this = types.SimpleNamespace(
    model=policy,
    ref_model=ref_model,
    accelerator=acc,
    args=types.SimpleNamespace(gradient_checkpointing_kwargs=None),
    aux_loss_enabled=False,
    ld_alpha=None,
    precompute_ref_logps=False,
    f_divergence_type="reverse_kl",
    loss_types=[loss_type],
    loss_weights=[1.0],
    beta=beta,
    label_smoothing=0.0,
    use_weighting=False,
    _metrics=metrics,
    _total_train_tokens=0,
    _tp_size=1,
  )
  policy.zero_grad()
  loss = trl.DPOTrainer._compute_loss(this, policy, inputs, False)
  loss.backward()
  grads = {n: p.grad.numpy().copy() for n, p in policy.named_parameters() if p.grad is not None}
  mode = "train" if policy.training else "eval"
  return float(loss.detach()), {k: v[-1] for k, v in metrics[mode].items()}, grads


def _gemmax(model, batch, beta, loss_type="sigmoid"):
  """(mean loss per pair, per-pair mean metrics, gradients by parameter path) of dpo_loss_fn."""
  loss_fn = dpo_loss_fn(DPOConfig(beta=beta, loss_type=loss_type))
  split = split_model(model)

  def f(params):
    s = loss_fn(nnx.merge(split.eval_def, params, split.rest), batch)
    return s.loss_sum / s.count, s

  (loss, s), grads = jax.value_and_grad(f, has_aux=True)(split.params)
  means = {k: float(v) / float(s.count) for k, v in s._asdict().items() if k != "count"}
  flat = {
    tuple(getattr(k, "key", getattr(k, "name", k)) for k in path): np.asarray(g)
    for path, g in jax.tree_util.tree_leaves_with_path(grads)
  }
  return float(loss), means, flat


def _close(ours, theirs, name, rtol=1e-4):
  """max |a - b| <= rtol * max |b| (f32, ~1e-4 relative)."""
  err, scale = np.abs(ours - theirs).max(), np.abs(theirs).max()
  assert err <= rtol * scale + 1e-9, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


def _check_scalars(loss, means, trl_loss, logged):
  np.testing.assert_allclose(loss, trl_loss, rtol=1e-4)
  for ours, theirs in [
    ("chosen_rewards_sum", "rewards/chosen"),
    ("rejected_rewards_sum", "rewards/rejected"),
    ("margins_sum", "rewards/margins"),
    ("correct", "rewards/accuracies"),
    ("chosen_logps_sum", "logps/chosen"),
    ("rejected_logps_sum", "logps/rejected"),
  ]:
    np.testing.assert_allclose(means[ours], logged[theirs], rtol=1e-4, atol=1e-6, err_msg=ours)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny random HF Llama, saved; and the same model after some 'training' (weights moved)."""
  hf = make_hf_model(llama_config(), seed=0)
  moved = copy.deepcopy(hf)
  torch.manual_seed(1)
  with torch.no_grad():
    for p in moved.parameters():
      p.add_(0.3 * torch.randn_like(p) * p.abs().mean())
  d = tmp_path_factory.mktemp("dpo_trl")
  return hf, save_hf_model(hf, str(d / "ref")), moved, save_hf_model(moved, str(d / "policy"))


@pytest.mark.parametrize("beta,loss_type", [(0.1, "sigmoid"), (0.5, "sigmoid"), (0.3, "ipo")])
def test_full_fine_tuning_equals_trl(tiny, beta, loss_type):
  """Policy = weights moved from the reference (the starting weights); every parameter's
  gradient, and loss, rewards, margins, accuracy and log-probs as TRL logs them."""
  hf, ref_path, moved, policy_path = tiny
  inputs, batch = _pairs()
  policy, ref_model = copy.deepcopy(moved), copy.deepcopy(hf)
  add_fused_lm_head(policy, outputs=TRL_OUTPUTS)
  add_fused_lm_head(ref_model)
  trl_loss, logged, torch_grads = _trl(policy, ref_model, inputs, beta, loss_type)
  assert abs(logged["rewards/margins"]) > 1e-3  # policy != reference: a real test

  model = load_hf(policy_path, "float32")
  scored = next(ReferenceScores(iter([batch]), load_hf(ref_path, "float32")))
  loss, means, grads = _gemmax(model, scored, beta, loss_type)
  _check_scalars(loss, means, trl_loss, logged)
  assert len(grads) == len(torch_grads)
  for path, g in grads.items():
    name, transpose = hf_name(path[:-1] if path[-1] == "value" else path)
    _close(g.T if transpose else g, torch_grads[name], name)


def test_lora_equals_trl_peft(tiny, tmp_path):
  """peft LoRA (random A and B) on the HF side, the same adapter loaded into gemmax; the
  reference is the base with adapters off on both sides (TRL's disable_adapter)."""
  hf, ref_path, _, _ = tiny
  inputs, batch = _pairs(seed=1)
  pm = make_peft_model(hf, dora=False)
  pm.save_pretrained(str(tmp_path / "adapter"))
  add_fused_lm_head(pm.get_base_model(), outputs=TRL_OUTPUTS)
  trl_loss, logged, torch_grads = _trl(pm, None, inputs, beta=0.2)
  assert abs(logged["rewards/margins"]) > 1e-3

  model = gp.load_adapter(load_hf(ref_path, "float32"), str(tmp_path / "adapter"))
  loss, means, grads = _gemmax(model, batch, beta=0.2)
  _check_scalars(loss, means, trl_loss, logged)
  assert len(grads) == len(torch_grads) > 0
  for path, g in grads.items():
    keys = [str(k) for k in path if k != "value"]
    module, leaf = ".".join(keys[:-1]), keys[-1]
    name = (
      f"base_model.model.model.{module}.{'lora_A' if leaf == 'lora_a' else 'lora_B'}.default.weight"
    )
    _close(g.T, torch_grads[name], name)


def _compiled_memory(model, loss_fn, batch):
  import optax

  from gemmax.train import make_train_step

  split = split_model(model)
  tx = optax.adamw(1e-3)
  step = make_train_step(split.train_def, tx, loss_fn=loss_fn, donate=False)
  args = (split.params, tx.init(split.params), split.rest, batch, jax.random.key(0))
  return step.lower(*args).compile().memory_analysis()


def test_lora_dpo_step_holds_the_base_weights_once():
  """The LoRA-DPO train step (policy and reference from one set of weights) against the plain SFT
  step of the same model on as many tokens: the same argument bytes, and temporaries larger by
  less than a quarter of the frozen weights (a second reference copy would add all of them)."""
  from gemmax.models import ModelConfig, Transformer

  cfg = ModelConfig.preset(
    "llama3.2-1b",
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    dtype="float32",
    param_dtype="float32",
  )
  model = gp.apply(Transformer(cfg, rngs=nnx.Rngs(0)), method="lora", rank=8, alpha=16)
  _, pairs = _pairs(vocab=4096)
  sft = {k: v.reshape(2 * B, -1) for k, v in pairs.items()}
  dpo = _compiled_memory(model, dpo_loss_fn(DPOConfig()), pairs)
  plain = _compiled_memory(model, None, sft)
  frozen = sum(
    x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)) if x.dtype == jnp.float32
  ) - sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, gp.trainable_filter(model))))
  assert dpo.argument_size_in_bytes == plain.argument_size_in_bytes
  extra = dpo.temp_size_in_bytes - plain.temp_size_in_bytes
  assert extra < frozen / 4, (extra, frozen, dpo, plain)  # measured: 64 bytes of ~20 MB
