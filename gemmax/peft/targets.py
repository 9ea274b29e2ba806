"""Finding the projections an adapter wraps: module names, peft-style target matching, replacement.

A module's name is its attribute path joined by dots, e.g. "layers.0.self_attn.q_proj"; its HF
name (as peft sees it) adds "model." in front ("lm_head" stays as is).
"""

from __future__ import annotations

import re
from typing import Iterator, Sequence

from flax import nnx

from gemmax.errors import GemmaxError
from gemmax.models.layers import Linear

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def hf_module_name(name: str) -> str:
  return name if name.split(".")[0] == "lm_head" else "model." + name


def gemmax_module_name(hf_name: str) -> str:
  return hf_name[len("model.") :] if hf_name.startswith("model.") else hf_name


def iter_modules(model, types) -> Iterator[tuple[str, nnx.Module]]:
  """(dotted name, module) for every submodule that is an instance of `types`."""
  for path, node in nnx.iter_graph(model):
    if path and isinstance(node, types):
      yield ".".join(str(p) for p in path), node


def linear_types():
  from gemmax.quant.nf4 import NF4Linear

  return (Linear, NF4Linear)


def matches(name: str, targets) -> bool:
  """peft semantics: a string is a regex that must fullmatch the name (gemmax or HF form);
  a list matches names equal to, or ending in "." + an entry."""
  if targets == "all-linear":
    return name.split(".")[-1] in ALL_LINEAR
  if isinstance(targets, str):
    return bool(re.fullmatch(targets, name) or re.fullmatch(targets, hf_module_name(name)))
  hf = hf_module_name(name)
  return any(n == t or n.endswith("." + t) for t in targets for n in (name, hf))


def select(model, targets) -> list[tuple[str, nnx.Module]]:
  """The base projections (Linear or NF4Linear) named by `targets`; ValueError if none."""
  if not isinstance(targets, str) and not isinstance(targets, Sequence):
    raise GemmaxError(
      f"targets must be 'all-linear', a regex string or a list of names, got {targets!r}"
    )
  if isinstance(targets, str) and targets != "all-linear":
    try:
      re.compile(targets)
    except re.error as e:
      raise GemmaxError(f"targets {targets!r} is not a valid regex ({e})") from None
  found = [(n, m) for n, m in iter_modules(model, linear_types()) if matches(n, targets)]
  if not found:
    names = sorted({n.split(".")[-1] for n, _ in iter_modules(model, linear_types())})
    raise GemmaxError(
      f"targets {targets!r} match no linear layer of the model "
      f"(layer names: {', '.join(names) or 'none'})"
    )
  return found


def get_module(model, name: str):
  node = model
  for part in name.split("."):
    node = node[int(part)] if part.isdigit() else getattr(node, part)
  return node


def set_module(model, name: str, new) -> None:
  """Replaces the submodule at dotted `name` in place."""
  *parents, last = name.split(".")
  parent = get_module(model, ".".join(parents)) if parents else model
  if last.isdigit():
    parent[int(last)] = new
  else:
    setattr(parent, last, new)


def compact_targets(adapted: list[str], all_names: list[str]) -> list[str]:
  """Short peft `target_modules`: leaf names when they select exactly the adapted set,
  else the full HF module names."""
  leaves = sorted({n.split(".")[-1] for n in adapted})
  chosen = [n for n in all_names if n.split(".")[-1] in leaves]
  if sorted(chosen) == sorted(adapted):
    return leaves
  return sorted(hf_module_name(n) for n in adapted)
