"""RunCheckpointer round trip and checkpoint averaging."""

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemmax.train.checkpoints import (
  RunCheckpointer,
  average_checkpoints,
  key_from_json,
  key_to_json,
)


class Tiny(nnx.Module):
  def __init__(self, value):
    self.w = nnx.Param(jnp.full((2, 3), value, jnp.float32))
    self.b = nnx.Param(jnp.full((3,), value, jnp.bfloat16))


def test_average_checkpoints(tmp_path):
  ckpt = RunCheckpointer(str(tmp_path / "c"), every=1, keep=5, async_save=False)
  opt = {"count": jnp.zeros((), jnp.int32)}
  for step, value in ((1, 1.0), (2, 2.0), (3, 6.0)):
    ckpt.save(step, nnx.state(Tiny(value), nnx.Param), opt, {"step": step})
  ckpt.close()
  paths = [str(tmp_path / "c" / str(s)) for s in (1, 2, 3)]
  avg = average_checkpoints(paths)
  np.testing.assert_allclose(avg["w"], np.full((2, 3), 3.0))
  assert avg["b"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(avg["b"], np.float32), np.full((3,), 3.0))
  # Restoring into a state puts the saved values back, with the step's metadata.
  ckpt = RunCheckpointer(str(tmp_path / "c"), every=1, keep=5, async_save=False)
  params, opt2, meta = ckpt.restore(nnx.state(Tiny(0.0), nnx.Param), opt, step=2)
  np.testing.assert_array_equal(np.asarray(params["w"][...]), np.full((2, 3), 2.0))
  assert meta == {"step": 2}
  ckpt.close()


def test_key_json_round_trip():
  key = jax.random.key(7)
  again = key_from_json(key_to_json(key))
  np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(again))
  np.testing.assert_array_equal(jax.random.normal(key, (3,)), jax.random.normal(again, (3,)))
