"""Orbax save / restore of sharded nnx state, onto the same or a different mesh.

Every host writes only its own shards; restoring reads each shard straight into the target
sharding (ShapeDtypeStructs carrying NamedShardings), so the mesh shape may change between runs.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from gemmax.sharding import abstract_with_shardings


def save_sharded(path: str, model_or_state) -> None:
  """Writes the arrays of a model / optimizer / nnx.State to the directory `path` (must not exist)."""
  state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), nnx.to_pure_dict(state))


def restore_sharded(path: str, target):
  """Reads `path` into `target`: a State of ShapeDtypeStructs with shardings
  (`gemmax.sharding.abstract_with_shardings`). Returns the filled nnx.State.
  """
  abstract = nnx.to_pure_dict(target)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.abspath(path), abstract)
  state = jax.tree.map(lambda x: x, target)  # a copy whose values we replace
  nnx.replace_by_pure_dict(state, restored)
  return state


def restore_model(path: str, abstract_model, mesh, rules=None):
  """Restores into `abstract_model` (e.g. gemmax.models.abstract_model(config), or a model
  with adapters built under nnx.eval_shape) sharded over `mesh`; returns the live model.
  """
  graphdef, state = nnx.split(abstract_model)
  state = restore_sharded(path, abstract_with_shardings(state, mesh, rules))
  return nnx.merge(graphdef, state)
