"""A Transformer initialised straight into its shards over a mesh."""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from gemmax.models.transformer import Transformer
from gemmax.sharding import model_shardings


def create_sharded(config, mesh: Mesh, rngs_seed: int = 0, rules=None, *, lenient: bool = False):
  """A Transformer initialised under jit straight into its shards (no full host copy)."""
  build = lambda: Transformer(config, rngs=nnx.Rngs(rngs_seed))
  abstract = nnx.eval_shape(build)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = model_shardings(abstract_state, mesh, rules, lenient=lenient)
  init = jax.jit(lambda: nnx.split(build())[1], out_shardings=shardings)
  return nnx.merge(graphdef, init())
