"""A run's workdir: checked before any work, claimed before any write, never another run's outputs
overwritten.

Policy (`check_workdir` reads only; `claim_workdir` then writes config.json):
  * missing or empty: the run starts there.
  * holds a config.json equal to this run's config (keys in `may_differ`, such as logging
    intervals, ignored): the same run, which resumes from its last complete checkpoint.
  * holds a config.json that differs: refused, naming the differing keys.
  * not empty but no config.json: refused (not a gemmax run directory).
  * not a directory, or not writable: refused.
Files are written whole: to a temporary name in the same directory, then `os.replace`d.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable

from gemmax.errors import WorkdirError
from gemmax.schema import flatten

CONFIG = "config.json"


def write_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` whole or not at all (a crash leaves the old file or none)."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def config_diff(old: dict, new: dict, may_differ: Iterable[str] = ()) -> list[str]:
  """Dotted keys whose values differ between two configs, as 'key old -> new'. Keys the old
  config lacks are skipped: options added since keep the old behaviour at their defaults."""
  a, b, skip = flatten(old), flatten(new), set(may_differ)
  keys = sorted(k for k in a if k not in skip and a[k] != b.get(k, "<unset>"))
  return [f"{k} {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys]


def _check_writable(path: str) -> None:
  """Raises WorkdirError unless `path` is (or can be created as) a writable directory."""
  probe = os.path.abspath(path)
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if not os.path.isdir(probe):
    raise WorkdirError(f"workdir {path}: {probe} is not a directory")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise WorkdirError(f"workdir {path}: {probe} is not writable")


def check_workdir(path: str, config: dict, may_differ: Iterable[str] = ()) -> bool:
  """Validates `path` for a run of `config` without writing. Returns whether it holds this run."""
  if not path:
    raise WorkdirError("workdir is empty")
  _check_writable(path)
  if not os.path.isdir(path) or not os.listdir(path):
    return False
  saved = os.path.join(path, CONFIG)
  if not os.path.isfile(saved):
    raise WorkdirError(
      f"workdir {path} is not empty and holds no {CONFIG} (not a gemmax run); "
      "choose a new or empty workdir"
    )
  try:
    with open(saved, encoding="utf-8") as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{saved}: unreadable ({e}); choose another workdir") from None
  diff = config_diff(old, config, may_differ)
  if diff:
    shown = "; ".join(diff[:4]) + (f"; ... {len(diff) - 4} more" if len(diff) > 4 else "")
    raise WorkdirError(
      f"workdir {path} holds a run with a different config ({shown}); "
      "use a new workdir to start another run, or the same config to resume"
    )
  return True


def claim_workdir(path: str, config: dict, may_differ: Iterable[str] = ()) -> bool:
  """`check_workdir`, then creates the workdir and writes config.json (if it is a new run).

  Returns whether the workdir already held this run (which then resumes).
  """
  same = check_workdir(path, config, may_differ)
  try:
    os.makedirs(path, exist_ok=True)
    if not same:
      write_atomic(os.path.join(path, CONFIG), json.dumps(config, indent=2, default=str))
  except OSError as e:
    raise WorkdirError(f"workdir {path}: cannot write ({e.strerror or e})") from None
  return same
