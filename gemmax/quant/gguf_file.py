"""A GGUF file (llama.cpp's format), read with the `gguf` package and checked completely.

`gguf.GGUFReader` parses the header; this module checks what it does not (every tensor's type is
one we dequantize, its row a whole number of blocks, its bytes inside the file's data section and
apart from every other tensor's) and reads tensors with plain file reads, dequantizing a few MiB
of rows at a time straight into the target dtype: the mapping's pages are never touched, so host
memory holds one copy of the weights plus a small scratch buffer.

Shapes are numpy order: GGUF's ne = [ne0, ne1] (ne0 contiguous) is the array [ne1, ne0], which
for a projection is HF's [out, in].
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import numpy as np

from gemmax.errors import GemmaxError

_CHUNK_BYTES = 8 << 20  # float32 scratch per dequantized chunk
_REQUIRED = object()


def _types():
  import gguf

  q = gguf.GGMLQuantizationType
  return {
    q.F32,
    q.F16,
    q.BF16,
    q.Q8_0,
    q.Q4_0,
    q.Q4_1,
    q.Q5_0,
    q.Q5_1,
    q.Q2_K,
    q.Q3_K,
    q.Q4_K,
    q.Q5_K,
    q.Q6_K,
  }


class TensorInfo(NamedTuple):
  name: str
  tensor_type: object  # gguf.GGMLQuantizationType
  ne: tuple  # GGUF order: ne0 (contiguous) first
  data_offset: int  # absolute, in bytes


class GGUFFile:
  """Metadata and tensors of one GGUF file. `meta(key)`, `shape(name)`, `read(name, dtype)`.

  `keep(key)` picks the metadata kept (default: all). The reader itself is dropped once the
  header is read: it holds a numpy view per array element (159 MiB for SmolLM2's vocabulary,
  more for Gemma 3's), which would otherwise sit beside the weights while they load.
  """

  def __init__(self, path: str | os.PathLike, keep: Callable[[str], bool] = lambda key: True):
    import gguf

    self.path = os.fspath(path)
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f"{self.path}: no such GGUF file")
    try:
      reader = gguf.GGUFReader(self.path)
    except Exception as e:  # noqa: BLE001 -- the reader raises ValueError, IndexError, KeyError...
      why = " ".join(str(e).split())[:160]
      if "cannot reshape" in why:  # a tensor view that runs past the end of the mapped file
        why = f"tensor data ends before the end the header promises: truncated ({why})"
      raise GemmaxError(
        f"{self.path}: not a readable GGUF file ({type(e).__name__}: {why})"
      ) from None
    if reader.byte_order != "I":
      raise GemmaxError(f"{self.path}: a big-endian GGUF file; only little-endian files are read")
    self.fields = {}  # key -> (value, GGUFValueType, array item type or None)
    for key, field in reader.fields.items():
      if key.startswith("GGUF.") or not keep(key):
        continue
      vtype = field.types[0] if field.types else None
      sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
      try:
        self.fields[key] = (field.contents(), vtype, sub)
      except Exception as e:  # noqa: BLE001 -- malformed strings (UnicodeDecodeError) and the like
        raise GemmaxError(
          f"{self.path}: metadata field {key} is unreadable ({type(e).__name__})"
        ) from None
    self.tensors = {
      t.name: TensorInfo(t.name, t.tensor_type, tuple(int(d) for d in t.shape), int(t.data_offset))
      for t in reader.tensors
    }
    self.file_size = os.path.getsize(self.path)
    self._check(reader.data_offset)
    del reader

  def _check(self, data_start: int) -> None:
    import gguf

    supported = _types()
    spans = []
    for t in self.tensors.values():
      if t.tensor_type not in supported:
        raise GemmaxError(
          f"{self.path}: tensor {t.name} has type {t.tensor_type.name}, which "
          f"gemmax does not read (supported: "
          f"{', '.join(s.name for s in supported)})"
        )
      block, nbytes = gguf.GGML_QUANT_SIZES[t.tensor_type]
      if not t.ne or t.ne[0] % block or any(d <= 0 for d in t.ne):
        raise GemmaxError(
          f"{self.path}: tensor {t.name} has shape {list(t.ne)}, not whole "
          f"{t.tensor_type.name} blocks of {block}"
        )
      size = int(np.prod(t.ne)) // block * nbytes
      if t.data_offset < data_start or t.data_offset + size > self.file_size:
        raise GemmaxError(
          f"{self.path}: tensor {t.name} ({size:,} bytes at offset "
          f"{t.data_offset:,}) lies outside the file's data section (file is "
          f"{self.file_size:,} bytes; truncated or corrupt)"
        )
      spans.append((t.data_offset, t.data_offset + size, t.name))
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
      if begin < end:
        raise GemmaxError(f"{self.path}: tensors {a} and {b} overlap in the file (corrupt header)")

  # --- metadata -----------------------------------------------------------------------------
  def has(self, key: str) -> bool:
    return key in self.fields

  def meta(self, key: str, default=_REQUIRED):
    """A metadata value as Python (str, int, float, bool or list); `default` when absent."""
    if key not in self.fields:
      if default is _REQUIRED:
        raise GemmaxError(f"{self.path}: metadata lacks {key}")
      return default
    return self.fields[key][0]

  @property
  def architecture(self) -> str:
    return self.meta("general.architecture")

  # --- tensors ------------------------------------------------------------------------------
  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(reversed(self.tensors[name].ne))

  def type_name(self, name: str) -> str:
    return self.tensors[name].tensor_type.name

  def read(self, name: str, dtype=np.float32) -> np.ndarray:
    """The tensor dequantized to `dtype`, shape `shape(name)`, read a chunk of rows at a time."""
    import gguf

    if name not in self.tensors:
      raise GemmaxError(f"{self.path}: no tensor {name}")
    t = self.tensors[name]
    shape = self.shape(name)
    cols = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    block, nbytes = gguf.GGML_QUANT_SIZES[t.tensor_type]
    row_bytes = cols // block * nbytes
    out = np.empty((rows, cols), dtype)
    step = max(1, _CHUNK_BYTES // (4 * cols))
    buf = np.empty(min(rows, step) * row_bytes, np.uint8)
    with open(self.path, "rb", buffering=0) as f:
      for r in range(0, rows, step):
        n = min(step, rows - r)
        view = memoryview(buf)[: n * row_bytes]
        f.seek(int(t.data_offset) + r * row_bytes)
        if f.readinto(view) != n * row_bytes:
          raise GemmaxError(f"{self.path}: tensor {name} ends early (file truncated while reading)")
        raw = buf[: n * row_bytes].reshape(n, row_bytes)
        chunk = gguf.quants.dequantize(raw, t.tensor_type).reshape(n, cols)
        if not np.isfinite(chunk).all():  # a NaN/Inf scale or weight: corrupt, never train on it
          raise GemmaxError(
            f"{self.path}: tensor {name} holds non-finite values (rows {r}-{r + n})"
          )
        out[r : r + n] = chunk
    return out.reshape(shape)
