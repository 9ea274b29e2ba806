"""The model gives the same logits and gradients with every attention implementation."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from gemmax.models import ModelConfig, Transformer


def _loss(model, ids):
  logp = jax.nn.log_softmax(model(ids)[:, :-1], -1)
  return -jnp.take_along_axis(logp, ids[:, 1:, None], -1).mean()


@pytest.mark.parametrize("impl", ["xla_chunked", "pallas"])
def test_forward_and_grads_match_xla(impl):
  config = ModelConfig.preset("gemma2-tiny", num_hidden_layers=2)
  ids = jnp.asarray(np.random.RandomState(0).randint(0, 256, (1, 20)))
  ref = Transformer(config, rngs=nnx.Rngs(0))
  other = Transformer(config.replace(attn_impl=impl), rngs=nnx.Rngs(0))
  step = nnx.jit(nnx.value_and_grad(_loss))
  (l0, g0), (l1, g1) = step(ref, ids), step(other, ids)
  np.testing.assert_allclose(
    np.asarray(nnx.jit(lambda m, x: m(x))(other, ids)),
    np.asarray(nnx.jit(lambda m, x: m(x))(ref, ids)),
    atol=1e-5,
  )
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(nnx.state(g1)), jax.tree.leaves(nnx.state(g0))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
