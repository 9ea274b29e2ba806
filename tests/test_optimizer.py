"""AdamW recipe: schedule shape, decay mask, clipping, against hand-computed facts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gemmax.train.optimizer import (
  OptimizerConfig,
  decay_mask,
  learning_rate_schedule,
  make_optimizer,
)


def test_schedule_warmup_then_cosine():
  cfg = OptimizerConfig(learning_rate=1.0, warmup_steps=10, steps=110, end_lr_fraction=0.1)
  lr = learning_rate_schedule(cfg)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(5)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(lr(10)), 1.0, rtol=1e-6)
  # Halfway through the cosine: (1 + 0.1) / 2.
  np.testing.assert_allclose(float(lr(60)), 0.55, rtol=1e-5)
  np.testing.assert_allclose(float(lr(110)), 0.1, rtol=1e-5)


def test_weight_decay_only_on_matrices_and_defaults():
  cfg = OptimizerConfig(
    learning_rate=0.1, warmup_steps=0, steps=10, weight_decay=0.5, clip_norm=None
  )
  assert (cfg.b1, cfg.b2) == (0.9, 0.95)
  params = {"kernel": jnp.ones((3, 2)), "scale": jnp.ones((3,))}
  assert decay_mask(params) == {"kernel": True, "scale": False}
  tx = make_optimizer(cfg)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  # Zero gradients: Adam's part is 0, so only decoupled decay (-lr * wd * p at lr(0)=peak) moves
  # the matrix; the vector does not move at all.
  np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((3, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["scale"], np.zeros(3))


def test_global_norm_clipping():
  """Clipping at 1.0 == the unclipped optimizer fed grads / ||g|| (eps = 1 makes scale matter)."""
  kw = dict(learning_rate=1.0, warmup_steps=0, steps=10, eps=1.0)
  params = {"a": jnp.zeros((2,)), "b": jnp.zeros((2,))}
  grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([0.0, 4.0])}  # global norm 5
  clip, plain = (
    make_optimizer(OptimizerConfig(clip_norm=1.0, **kw)),
    make_optimizer(OptimizerConfig(clip_norm=None, **kw)),
  )
  u1, _ = clip.update(grads, clip.init(params), params)
  u2, _ = plain.update(jax.tree.map(lambda g: g / 5.0, grads), plain.init(params), params)
  u3, _ = plain.update(grads, plain.init(params), params)
  for k in params:
    np.testing.assert_allclose(u1[k], u2[k], rtol=1e-6)
  assert not np.allclose(u1["a"], u3["a"])


@pytest.mark.parametrize(
  "field,value", [("learning_rate", 0.0), ("steps", 0), ("warmup_steps", -1)]
)
def test_invalid_values(field, value):
  with pytest.raises(ValueError, match=field):
    make_optimizer(OptimizerConfig(**{field: value}))
