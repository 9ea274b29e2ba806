"""Mesh, logical axis rules and partition helpers.

Every parameter carries logical axis names (`var.get_metadata()["axes"]`, e.g. ("embed", "mlp")).
A rules table maps each logical name to mesh axes of a 3-axis mesh ("data", "fsdp", "tensor"),
so data parallel, FSDP and tensor parallel are a choice of mesh shape (and, rarely, of rules):

  mesh (8, 1, 1): pure data parallel, parameters replicated.
  mesh (1, 8, 1): FSDP, every "embed" dimension split 8 ways, batch split 8 ways.
  mesh (1, 4, 2): FSDP x tensor parallel (heads / mlp / vocab split 2 ways).

Adapters follow their base weight: LoRA A [in, r] has axes (in_axis, None), B [r, out] has
(None, out_axis), a DoRA magnitude (out_axis,). NF4-packed weights are flat runs of blocks; they
use the logical name "nf4_blocks", split over fsdp x tensor so each device holds 1/n of the bytes
(dequantisation then gathers, as FSDP does for any weight). Optimizer state (nnx.Optimizer) copies
the `axes` metadata of its parameter, so it is sharded exactly like it.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gemmax.errors import GemmaxError

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = Union[None, str, tuple]

# logical axis name -> mesh axis, tuple of mesh axes, or None (replicated).
DEFAULT_RULES: dict[str, MeshAxes] = {
  # parameters
  "embed": "fsdp",
  "vocab": "tensor",
  "q_heads": "tensor",
  "kv_heads": "tensor",
  "mlp": "tensor",
  "norm": None,
  "head_dim": None,
  "lora_rank": None,
  "nf4_blocks": ("fsdp", "tensor"),
  # activations
  "batch": ("data", "fsdp"),
  "seq": None,
  "act_heads": "tensor",
  "act_mlp": "tensor",
  "act_vocab": "tensor",
}
# Activations: the hidden ("embed") dim stays whole; the batch carries data x fsdp.
ACTIVATION_RULES: dict[str, MeshAxes] = {**DEFAULT_RULES, "embed": None}
HIDDEN = ("batch", "seq", "embed")  # logical axes of [B, T, D] hidden states


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A Mesh with axes ("data", "fsdp", "tensor") over `devices` (default: all, every host).

  One size may be -1 for "the rest of the devices". Axes are Auto (GSPMD propagation).
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise GemmaxError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): only one size may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise GemmaxError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): sizes must be >= 1 or -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n % known:
      raise GemmaxError(
        f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): {known} does not divide the {n} devices"
      )
    sizes[sizes.index(-1)] = n // known
  if math.prod(sizes) != n:
    raise GemmaxError(
      f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) needs "
      f"{math.prod(sizes)} devices, but there are {n}"
    )
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _mesh_sizes(mesh) -> dict[str, int]:
  return dict(mesh.shape) if not isinstance(mesh, Mapping) else dict(mesh)


def _as_tuple(m: MeshAxes) -> tuple:
  if m is None:
    return ()
  return (m,) if isinstance(m, str) else tuple(m)


def partition_spec(
  axes: Optional[Sequence[Optional[str]]],
  shape: Sequence[int],
  mesh,
  rules: Optional[Mapping[str, MeshAxes]] = None,
  *,
  name: str = "",
  lenient: bool = False,
) -> PartitionSpec:
  """Logical `axes` of a tensor of `shape` -> PartitionSpec over `mesh` (a Mesh or {axis: size}).

  A mesh axis is used at most once (later dims drop it); size-1 mesh axes are dropped. A dim that
  its mesh axes do not divide raises, naming the tensor, unless `lenient` (then it is replicated).
  Unknown logical names raise; None means replicated.
  """
  rules = DEFAULT_RULES if rules is None else rules
  sizes = _mesh_sizes(mesh)
  label = name or f"tensor with axes {tuple(axes) if axes else axes} and shape {tuple(shape)}"
  if axes is None:
    return PartitionSpec()
  if len(axes) != len(shape):
    raise GemmaxError(f"{label}: {len(axes)} logical axes for a rank-{len(shape)} tensor")
  used, spec = set(), []
  for dim, (logical, size) in enumerate(zip(axes, shape)):
    if logical is None:
      spec.append(None)
      continue
    if logical not in rules:
      raise GemmaxError(
        f"{label}: logical axis {logical!r} has no sharding rule "
        f"(known: {', '.join(sorted(rules))})"
      )
    mesh_axes = tuple(a for a in _as_tuple(rules[logical]) if a not in used and sizes.get(a, 1) > 1)
    missing = [a for a in _as_tuple(rules[logical]) if a not in sizes]
    if missing:
      raise GemmaxError(
        f"{label}: rule {logical!r} -> {rules[logical]!r} names mesh axes "
        f"{missing} that the mesh {tuple(sizes)} does not have"
      )
    parts = math.prod(sizes[a] for a in mesh_axes)
    if size % parts:
      if not lenient:
        raise GemmaxError(
          f"{label}: dim {dim} ({logical!r}, size {size}) is not divisible by mesh "
          f"axes {mesh_axes} of total size {parts}; change the mesh or the rules"
        )
      while mesh_axes and size % math.prod(sizes[a] for a in mesh_axes):
        mesh_axes = mesh_axes[:-1]  # lenient: the longest prefix that divides
    used.update(mesh_axes)
    spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return PartitionSpec(*spec)


def sharding_for_axes(
  axes, shape, mesh: Mesh, rules=None, *, name: str = "", lenient: bool = False
) -> NamedSharding:
  """NamedSharding for one tensor from its logical axes (see `partition_spec`)."""
  return NamedSharding(mesh, partition_spec(axes, shape, mesh, rules, name=name, lenient=lenient))


def _state(obj):
  return obj if isinstance(obj, nnx.State) else nnx.state(obj)


def _path_name(path) -> str:
  return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def model_shardings(model_or_state, mesh: Mesh, rules=None, *, lenient: bool = False):
  """A State of NamedShardings, one per Variable of a model / optimizer / State (abstract or not).

  The result is a pytree prefix of `nnx.state(model)`: use it as jit `out_shardings` or for
  `jax.device_put`. Variables without `axes` metadata (counters, RNG keys) are replicated.
  """
  state = _state(model_or_state)
  is_var = lambda x: isinstance(x, nnx.Variable)

  def one(path, leaf):
    if not is_var(leaf):
      return NamedSharding(mesh, PartitionSpec())
    axes = leaf.get_metadata().get("axes")
    shape = np.shape(leaf.get_value()) if not hasattr(leaf, "shape") else leaf.shape
    return sharding_for_axes(
      axes, tuple(shape), mesh, rules, name=_path_name(path), lenient=lenient
    )

  return jax.tree_util.tree_map_with_path(one, state, is_leaf=is_var)


def shard_model(model, mesh: Mesh, rules=None, *, lenient: bool = False):
  """Moves every array of `model` (or nnx.Optimizer) into its sharding over `mesh`, in place."""
  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, model_shardings(state, mesh, rules, lenient=lenient)))
  return model


def abstract_with_shardings(model_or_state, mesh: Mesh, rules=None, *, lenient: bool = False):
  """State whose leaves are ShapeDtypeStructs carrying their target sharding (for restoring)."""
  state = _state(model_or_state)
  shardings = model_shardings(state, mesh, rules, lenient=lenient)
  is_var = lambda x: isinstance(x, nnx.Variable)

  def one(leaf, sharding):
    value = leaf.get_value() if is_var(leaf) else leaf
    sds = jax.ShapeDtypeStruct(np.shape(value), value.dtype, sharding=sharding)
    return leaf.replace(sds) if is_var(leaf) else sds

  return jax.tree.map(one, state, shardings, is_leaf=is_var)


def constrain(x: jax.Array, logical_axes: Sequence[Optional[str]], rules=None) -> jax.Array:
  """Sharding constraint on an activation by logical names, e.g. ("batch", "seq", "embed").

  A no-op outside `jax.set_mesh(mesh)`. In activations "embed" is not split by default
  (batch already uses fsdp); dims the mesh does not divide (batch 1 while sampling) stay whole.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  rules = ACTIVATION_RULES if rules is None else rules
  spec = partition_spec(logical_axes, x.shape, dict(mesh.shape), rules, lenient=True)
  return jax.lax.with_sharding_constraint(x, spec)


def per_device_bytes(tree) -> dict:
  """{device: bytes} of the shards of every jax.Array in `tree` held by this process."""
  out: dict = {}
  for leaf in jax.tree.leaves(tree):
    for shard in getattr(leaf, "addressable_shards", ()):
      out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
  return out
