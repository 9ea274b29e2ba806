"""Orbax checkpoints of a training run, and checkpoint averaging.

A checkpoint (one step directory) holds three items:
  params     the trainable parameters (pure dict of arrays)
  opt_state  the optax state
  meta       JSON: step, the run's RNG key data, and the data iterator state
The frozen base is not saved: it is rebuilt from the model source (HF dir / preset + seed).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx


class RunCheckpointer:
  """`CheckpointManager` over workdir/checkpoints: save every N steps, keep K, async writes."""

  def __init__(self, directory: str, *, every: int, keep: int = 3, async_save: bool = True):
    self.every = every
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(1, every), create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                         item_names=("params", "opt_state", "meta"))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, params: nnx.State, opt_state, meta: dict, *, force=False) -> bool:
    args = ocp.args.Composite(params=ocp.args.StandardSave(params.to_pure_dict()),
                              opt_state=ocp.args.StandardSave(opt_state),
                              meta=ocp.args.JsonSave(meta))
    return self.manager.save(step, args=args, force=force)

  def restore(self, params: nnx.State, opt_state, step: int | None = None):
    """Restore into the structure (and shardings) of `params` / `opt_state`.

    Returns (params, opt_state, meta); `params` is updated in place and returned.
    """
    step = self.latest_step() if step is None else step
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract(params.to_pure_dict())),
        opt_state=ocp.args.StandardRestore(abstract(opt_state)),
        meta=ocp.args.JsonRestore()))
    nnx.replace_by_pure_dict(params, out["params"])
    return params, out["opt_state"], out["meta"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def key_to_json(key: jax.Array) -> list[int]:
  """A PRNG key (typed or raw uint32) as a JSON list of uint32 words."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return [int(x) for x in np.asarray(key).reshape(-1)]


def key_from_json(words: list[int]) -> jax.Array:
  return jax.random.wrap_key_data(jnp.asarray(np.asarray(words, dtype=np.uint32)))


def average_checkpoints(paths: Sequence[str], item: str = "params") -> dict[str, Any]:
  """Element-wise mean of the `item` trees of several checkpoint step directories.

  Gemma 2's post-training averages checkpoints from one run; all trees must match in structure
  and shapes. The mean is accumulated in float32 and cast back to each leaf's dtype.
  """
  if not paths:
    raise ValueError("average_checkpoints needs at least one checkpoint path")
  checkpointer = ocp.StandardCheckpointer()
  total, first = None, None
  for path in paths:
    item_dir = os.path.join(os.path.abspath(path), item)
    if not os.path.isdir(item_dir):
      raise FileNotFoundError(f"{path}: no '{item}' item in this checkpoint")
    tree = checkpointer.restore(item_dir)
    if first is None:
      first = tree
      total = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
      continue
    if jax.tree.structure(tree) != jax.tree.structure(first):
      raise ValueError(f"{path}: parameter tree differs from {paths[0]}")
    for (kp, a), b in zip(jax.tree_util.tree_flatten_with_path(first)[0], jax.tree.leaves(tree)):
      if a.shape != b.shape:
        raise ValueError(f"{path}: {jax.tree_util.keystr(kp)} has shape {b.shape}, "
                         f"expected {a.shape}")
    total = jax.tree.map(lambda t, x: t + jnp.asarray(x, jnp.float32), total, tree)
  n = float(len(paths))
  return jax.tree.map(lambda t, x: (t / n).astype(x.dtype), total, first)
