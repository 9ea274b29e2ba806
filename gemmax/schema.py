"""One typed schema per script config: defaults, type and range checks, resume rules.

A schema is a nested dict of `Key`s, e.g. {"optimizer": {"b1": Key(0.9, float, open_unit())}}.
From it come the config a recipe starts from (`defaults`), every check with its one-line error
(`check`: unknown or missing keys, types, ranges, enumerations), and the keys a resumed run may
change (`may_differ`). A recipe file only overrides values; the script never learns its layout
from anywhere else.

    c = schema.defaults(FINETUNE)           # in experiments/configs/*.py
    schema.check(c, FINETUNE)               # in the script, before any work
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

from ml_collections import config_dict

from gemmax.errors import ConfigError

Rule = tuple[Callable[[Any], bool], str]  # (test, what it requires: "> 0", "in (0, 1)", ...)


@dataclasses.dataclass(frozen=True)
class Key:
  """One config value: its default, its type(s), a rule on its value, and whether a resumed run
  may change it (it does not change the trained weights: logging, paths, devices...)."""

  default: Any
  kind: Any  # a type or a tuple of types; float also accepts int
  rule: Optional[Rule] = None
  resume: bool = False
  optional: bool = False  # None is allowed (a placeholder)


# --- rules -----------------------------------------------------------------------------------
def _finite(x) -> bool:
  return not isinstance(x, float) or math.isfinite(x)


def above(lo) -> Rule:
  return (lambda x: _finite(x) and x > lo), f"> {lo}"


def at_least(lo) -> Rule:
  return (lambda x: _finite(x) and x >= lo), f">= {lo}"


def between(lo, hi, *, low_open=False, high_open=False) -> Rule:
  """lo..hi with each end closed unless said open: between(0, 1, high_open=True) is [0, 1)."""

  def test(x):
    return _finite(x) and (x > lo if low_open else x >= lo) and (x < hi if high_open else x <= hi)

  return test, f"in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"


def one_of(*values) -> Rule:
  return (lambda x: x in values), "one of " + "|".join(
    repr(v) if v == "" else str(v) for v in values
  )


def nonempty() -> Rule:
  return bool, "non-empty"


# --- building and checking -------------------------------------------------------------------
def defaults(schema: dict) -> config_dict.ConfigDict:
  """The config of every key at its default (sections become nested ConfigDicts)."""
  c = config_dict.ConfigDict()
  for name, node in schema.items():
    if isinstance(node, dict):
      c[name] = defaults(node)
    elif node.kind is config_dict.ConfigDict:  # a free-form section, e.g. ModelConfig overrides
      c[name] = config_dict.ConfigDict(node.default)
    elif node.optional and node.default is None:
      kind = node.kind[0] if isinstance(node.kind, tuple) else node.kind
      c[name] = config_dict.placeholder(kind)
    else:
      c[name] = node.default
  return c


def flatten(tree: dict, prefix: str = "") -> dict:
  """Dotted name -> leaf of a nested dict: a schema's Keys, or a config's values."""
  out = {}
  for name, node in tree.items():
    if isinstance(node, dict):
      out.update(flatten(node, f"{prefix}{name}."))
    else:
      out[f"{prefix}{name}"] = node
  return out


def may_differ(schema: dict) -> tuple[str, ...]:
  """The dotted keys a resumed run may change."""
  return tuple(k for k, key in flatten(schema).items() if key.resume)


def _type_ok(value, kind) -> bool:
  kinds = kind if isinstance(kind, tuple) else (kind,)
  for k in kinds:
    if k is bool and isinstance(value, bool):
      return True
    if k is float and isinstance(value, (int, float)) and not isinstance(value, bool):
      return True
    if (
      k not in (bool, float) and isinstance(value, k) and not (k is int and isinstance(value, bool))
    ):
      return True
  return False


def _names(kind) -> str:
  return "|".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))


def check(c, schema: dict, prefix: str = "") -> None:
  """Raises ConfigError naming the first unknown, missing, mistyped or out-of-range key."""
  for name in c.keys():
    if name not in schema:
      known = ", ".join(sorted(schema))
      raise ConfigError(f"unknown config key '{prefix}{name}' (known: {known})")
  for name, node in schema.items():
    dotted = f"{prefix}{name}"
    if name not in c:
      raise ConfigError(f"config lacks key '{dotted}'")
    value = c[name]
    if isinstance(node, dict):
      if not hasattr(value, "keys"):
        raise ConfigError(f"config key '{dotted}' must be a section, got {value!r}")
      check(value, node, dotted + ".")
      continue
    if value is None and node.optional:
      continue
    if not _type_ok(value, node.kind):
      raise ConfigError(
        f"config key '{dotted}' must be {_names(node.kind)}, got {type(value).__name__} {value!r}"
      )
    if node.rule is not None:
      _require(dotted, node.rule, value)


def check_fields(obj, rules: dict[str, Rule], prefix: str = ""):
  """Raises ConfigError naming the first field of `obj` that breaks its rule; returns `obj`."""
  for name, rule in rules.items():
    _require(prefix + name, rule, getattr(obj, name))
  return obj


def _require(name: str, rule: Rule, value) -> None:
  test, requires = rule
  values = value if isinstance(value, (list, tuple)) else [value]
  if not all(test(v) for v in values):
    raise ConfigError(f"{name} must be {requires}, got {value!r}")
