"""Reward functions for GRPO and best-of-n sampling: Python callables named in a config.

A reward is `function(prompt: str, completion: str, row: dict) -> float | None`, named
"module:function" (the module is imported the way a config file's own imports are: it is the
user's code, named by the user). None marks a completion the function cannot score; it counts as
NaN in that function's column and 0 in the weighted total. Several functions combine with weights.

Built in (`gemmax.evals.rewards:<name>`): `exact_match` (1.0 when the completion equals the row's
`output` after gemmax.evals.normalize) and `first_word_match` (1.0 when the completion's first word
does, punctuation around it aside: a label answer followed by an explanation still counts).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import string
from typing import Callable, Sequence

import numpy as np

from gemmax.errors import ConfigError, GemmaxError
from gemmax.evals.exact_match import normalize

__all__ = ["Rewards", "load_rewards", "exact_match", "first_word_match"]


def exact_match(prompt: str, completion: str, row: dict) -> float:
  return float(normalize(completion) == normalize(str(row["output"])))


def first_word_match(prompt: str, completion: str, row: dict) -> float:
  words = normalize(completion).split()
  return float(bool(words) and words[0].strip(string.punctuation) == normalize(str(row["output"])))


def _resolve(spec: str) -> Callable:
  module, sep, name = spec.partition(":")
  if not sep or not module or not name:
    raise ConfigError(f"reward {spec!r} must be 'module:function'")
  try:
    mod = importlib.import_module(module)
  except ImportError as e:
    raise ConfigError(f"reward {spec!r}: cannot import {module} ({e})") from None
  except Exception as e:  # the user's module failed while importing: name it, not a traceback
    raise ConfigError(
      f"reward {spec!r}: importing {module} raised {type(e).__name__}: {e}"
    ) from None
  fn = getattr(mod, name, None)
  if not callable(fn):
    raise ConfigError(f"reward {spec!r}: {module} has no function {name}")
  return fn


@dataclasses.dataclass(frozen=True)
class Rewards:
  """Named reward functions with weights; calling it scores a batch of completions."""

  names: tuple[str, ...]
  functions: tuple[Callable, ...]
  weights: tuple[float, ...]

  def __call__(self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[dict]):
    """(per-function rewards [N, F] float32 with NaN where a function returned None, weighted
    totals [N] float32). A value that is not a finite number is an error naming the function
    and the completion."""
    if not len(prompts) == len(completions) == len(rows):
      raise GemmaxError("rewards: prompts, completions and rows differ in length")
    table = np.full((len(completions), len(self.functions)), np.nan, np.float32)
    for j, (name, fn) in enumerate(zip(self.names, self.functions)):
      for i, (p, c, r) in enumerate(zip(prompts, completions, rows)):
        value = fn(p, c, r)
        if value is None:
          continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
          raise GemmaxError(f"reward {name} returned {type(value).__name__} for completion {i}")
        if not math.isfinite(value):
          raise GemmaxError(f"reward {name} returned {value} for completion {i}")
        table[i, j] = value
    total = np.nansum(table * np.asarray(self.weights, np.float32), axis=1)
    return table, total.astype(np.float32)


def load_rewards(specs: Sequence[str] | str, weights: Sequence[float] | None = None) -> Rewards:
  """Rewards from "module:function" names (a comma-separated string or a list) and weights
  (default 1 each); every name is imported and checked here, before any sampling."""
  if isinstance(specs, str):
    specs = [s.strip() for s in specs.split(",") if s.strip()]
  if not specs:
    raise ConfigError("no reward function given")
  weights = [1.0] * len(specs) if weights is None or len(weights) == 0 else list(weights)
  if len(weights) != len(specs):
    raise ConfigError(f"{len(specs)} reward functions but {len(weights)} weights")
  if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
    raise ConfigError(f"reward weights must be finite numbers, got {weights}")
  return Rewards(tuple(specs), tuple(_resolve(s) for s in specs), tuple(float(w) for w in weights))
