"""One entry point for any model source: an HF directory, a `.gguf` file or a registry name."""

from __future__ import annotations

import os

from gemmax import fetch
from gemmax.errors import GemmaxError


def model_file(source) -> tuple[str, str]:
  """(kind, path) for a source: kind "hf" (a checkpoint directory) or "gguf" (a file). Registry
  names are fetched on first use; a directory holding no config.json but one .gguf is that file."""
  path = os.fspath(fetch.resolve(source))
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, "config.json")):
      return "hf", path
    ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
    if len(ggufs) == 1:
      return "gguf", os.path.join(path, ggufs[0])
    raise GemmaxError(
      f"{path}: neither an HF checkpoint (config.json) nor a directory with one "
      f".gguf file ({len(ggufs)} found)"
    )
  if os.path.isfile(path):
    with open(path, "rb") as f:
      if f.read(4) == b"GGUF":
        return "gguf", path
    raise GemmaxError(f"{path}: not a GGUF file (no GGUF magic) and not a checkpoint directory")
  hint = f"; registry names: {', '.join(fetch.REGISTRY)}" if os.sep not in path else ""
  raise FileNotFoundError(f"{path}: no such model directory, file or registry name{hint}")


def load(source, dtype=None, *, compute_dtype=None, mesh=None, **overrides):
  """A Transformer from an HF directory, a `.gguf` file or a registry name
  (`smollm2-135m-instruct`, ...: fetched once, pinned by sha256, cached).

  dtype: weight storage dtype (default: the checkpoint's dtype; float32 for GGUF);
  compute_dtype: activation dtype (default: dtype); mesh: shard each tensor as it is read.
  """
  kind, path = model_file(source)
  if kind == "hf":
    from gemmax.convert.hf import load_hf

    return load_hf(path, dtype, compute_dtype=compute_dtype, mesh=mesh, **overrides)
  from gemmax.convert.gguf_io import load_gguf

  return load_gguf(path, dtype, compute_dtype=compute_dtype, mesh=mesh, **overrides)
