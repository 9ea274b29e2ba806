"""The pure train step: only trainable params get grads/opt state; accumulation == big batch."""

import jax
import numpy as np
import optax
from flax import nnx

from gemmax import peft
from gemmax.models import ModelConfig, Transformer
from gemmax.train import OptimizerConfig, make_optimizer, make_train_step, split_model
from gemmax.train.losses import naive_cross_entropy


def _batch(b=4, t=12, vocab=256, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (b, t + 1)).astype(np.int32)
  mask = (rng.random((b, t)) > 0.4).astype(np.int32)
  return dict(
    input_ids=ids[:, :-1],
    targets=ids[:, 1:],
    loss_mask=mask,
    positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)),
    segment_ids=np.ones((b, t), np.int32),
  )


def _model(lora=True):
  m = Transformer(ModelConfig.preset("gemma2-tiny", num_hidden_layers=2), rngs=nnx.Rngs(0))
  return peft.apply(m, "lora", rank=4, alpha=8) if lora else m


def test_lora_split_trains_adapters_only_and_keeps_base():
  sm = split_model(_model())
  leaves = jax.tree_util.tree_flatten_with_path(sm.params)[0]
  assert leaves and all("lora_" in jax.tree_util.keystr(p) for p, _ in leaves)
  base_before = [np.asarray(x) for x in jax.tree.leaves(nnx.State.filter(sm.rest, nnx.Param))]
  tx = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0, steps=10))
  opt_state = tx.init(sm.params)
  n_opt = sum(np.prod(x.shape) for x in jax.tree.leaves(opt_state) if np.ndim(x))
  n_train = sum(np.prod(x.shape) for x in jax.tree.leaves(sm.params))
  assert n_opt == 2 * n_train  # Adam's mu and nu, for adapters only
  step = make_train_step(sm.train_def, tx)
  params, opt_state, m = step(sm.params, opt_state, sm.rest, _batch(), jax.random.key(0))
  base_after = [np.asarray(x) for x in jax.tree.leaves(nnx.State.filter(sm.rest, nnx.Param))]
  for a, b in zip(base_before, base_after):
    np.testing.assert_array_equal(a, b)
  assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0


def test_loss_matches_dense_model_logits():
  model = _model(lora=False)
  batch = _batch()
  sm = split_model(model)
  tx = optax.sgd(0.0)
  step = make_train_step(sm.train_def, tx, donate=False)
  _, _, m = step(sm.params, tx.init(sm.params), sm.rest, batch, jax.random.key(0))
  logits = model(batch["input_ids"], positions=batch["positions"])
  logp = jax.nn.log_softmax(logits, -1)
  ce = -np.take_along_axis(np.asarray(logp), batch["targets"][..., None], -1)[..., 0]
  expected = (ce * batch["loss_mask"]).sum() / batch["loss_mask"].sum()
  np.testing.assert_allclose(float(m["loss"]), expected, rtol=1e-5)


def test_grad_accumulation_equals_big_batch():
  batch = _batch(b=4)
  tx = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0, steps=10))
  outs = []
  for accum in (1, 2):
    sm = split_model(_model())
    step = make_train_step(sm.train_def, tx, accum_steps=accum)
    outs.append(step(sm.params, tx.init(sm.params), sm.rest, batch, jax.random.key(0)))
  (p1, _, m1), (p2, _, m2) = outs
  np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-4)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
