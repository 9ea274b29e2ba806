"""The one Orbax wrapper: nnx state saved and restored sharded (onto the same or another mesh), a
training run's checkpoints, and checkpoint averaging.

Every host writes only its own shards; restoring reads each shard straight into the target's
sharding (ShapeDtypeStructs carrying NamedShardings), so the mesh shape may change between runs.

A run checkpoint (one step directory) holds three items:
  params     the trainable parameters (pure dict of arrays)
  opt_state  the optax state
  meta       JSON: step, the run's RNG key data, and the data iterator state
The frozen base is not saved: it is rebuilt from the model source (HF dir / preset + seed).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from gemmax.errors import GemmaxError, NonFiniteError
from gemmax.sharding import abstract_with_shardings

log = logging.getLogger(__name__)


def _abstract(tree):
  """ShapeDtypeStructs (with their shardings) of a tree of arrays or ShapeDtypeStructs."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _read(path: str, abstract=None):
  """A StandardCheckpointer directory, into `abstract`'s structure and shardings when given."""
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(path), abstract)


# --- a model's state ------------------------------------------------------------------------
def save_sharded(path: str, model_or_state) -> None:
  """Writes the arrays of a model / optimizer / nnx.State to the directory `path` (must not exist)."""
  state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), nnx.to_pure_dict(state))


def restore_sharded(path: str, target: nnx.State) -> nnx.State:
  """Reads `path` into a copy of `target`, an nnx.State of arrays or of ShapeDtypeStructs with
  shardings (`gemmax.sharding.abstract_with_shardings`), each array read into its sharding."""
  state = jax.tree.map(lambda x: x, target)  # a copy whose values we replace
  nnx.replace_by_pure_dict(state, _read(path, _abstract(nnx.to_pure_dict(target))))
  return state


def restore_model(path: str, abstract_model, mesh, rules=None):
  """Restores into `abstract_model` (e.g. gemmax.models.abstract_model(config), or a model
  with adapters built under nnx.eval_shape) sharded over `mesh`; returns the live model."""
  graphdef, state = nnx.split(abstract_model)
  return nnx.merge(graphdef, restore_sharded(path, abstract_with_shardings(state, mesh, rules)))


# --- a training run ---------------------------------------------------------------------------
class RunCheckpointer:
  """`CheckpointManager` over workdir/checkpoints: save every N steps, keep K, async writes.

  Orbax writes each step into `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` only when
  complete, so a crash mid-write leaves a temporary directory that is never restored (and is
  removed when the next run opens the directory). Restoring walks back from the newest step past
  any checkpoint that cannot be read. Trees holding NaN/Inf are refused, never written.
  """

  def __init__(self, directory: str, *, every: int, keep: int = 3, async_save: bool = True):
    self.every, self.directory = every, os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      save_interval_steps=max(1, every),
      create=True,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
    )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("params", "opt_state", "meta")
    )

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, params: nnx.State, opt_state, meta: dict, *, force=False) -> bool:
    if not self.manager.should_save(step) and not force:
      return False
    check_finite(params.to_pure_dict(), f"step {step} parameters")
    check_finite(opt_state, f"step {step} optimizer state")
    args = ocp.args.Composite(
      params=ocp.args.StandardSave(params.to_pure_dict()),
      opt_state=ocp.args.StandardSave(opt_state),
      meta=ocp.args.JsonSave(meta),
    )
    return self.manager.save(step, args=args, force=force)

  def restore(self, params: nnx.State, opt_state, step: int | None = None):
    """Restore into the structure (and shardings) of `params` / `opt_state`.

    Without `step`: the newest checkpoint that restores (older ones are tried when the newest is
    unreadable). Returns (params, opt_state, meta); `params` is updated in place and returned.
    """
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    failures = []
    for s in steps:
      try:
        out = self.manager.restore(
          s,
          args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(params.to_pure_dict())),
            opt_state=ocp.args.StandardRestore(_abstract(opt_state)),
            meta=ocp.args.JsonRestore(),
          ),
        )
      except Exception as e:  # noqa: BLE001 -- any unreadable step: fall back to an older one
        failures.append(f"step {s}: {' '.join(str(e).split())[:300]}")
        log.warning(
          "checkpoint %s/%s cannot be restored (%s); trying an older one",
          self.directory,
          s,
          failures[-1],
        )
        continue
      nnx.replace_by_pure_dict(params, out["params"])
      return params, out["opt_state"], out["meta"]
    raise GemmaxError(
      f"{self.directory}: no checkpoint could be restored ({'; '.join(failures) or 'none found'})"
    )

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


@jax.jit
def _finite_flags(leaves):
  # One program per tree structure (not one per leaf shape): compiled once, reused every save.
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def check_finite(tree, what: str) -> None:
  """Raises NonFiniteError if a floating-point leaf of `tree` holds NaN or Inf."""
  leaves = [
    (p, x)
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  if not leaves:
    return
  ok = jax.device_get(_finite_flags([x for _, x in leaves]))
  bad = [jax.tree_util.keystr(p) for (p, _), good in zip(leaves, ok) if not good]
  if bad:
    raise NonFiniteError(
      f"refusing to checkpoint {what}: NaN/Inf in {', '.join(bad[:3])}"
      + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    )


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
    raise GemmaxError("average_checkpoints needs at least one checkpoint path")
  total, first = None, None
  for path in paths:
    item_dir = os.path.join(os.path.abspath(path), item)
    if not os.path.isdir(item_dir):
      raise FileNotFoundError(f"{path}: no '{item}' item in this checkpoint")
    tree = _read(item_dir)
    if first is None:
      first = tree
      total = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
      continue
    if jax.tree.structure(tree) != jax.tree.structure(first):
      raise GemmaxError(f"{path}: parameter tree differs from {paths[0]}")
    for (kp, a), b in zip(jax.tree_util.tree_flatten_with_path(first)[0], jax.tree.leaves(tree)):
      if a.shape != b.shape:
        raise GemmaxError(
          f"{path}: {jax.tree_util.keystr(kp)} has shape {b.shape}, expected {a.shape}"
        )
    total = jax.tree.map(lambda t, x: t + jnp.asarray(x, jnp.float32), total, tree)
  n = float(len(paths))
  return jax.tree.map(lambda t, x: (t / n).astype(x.dtype), total, first)
