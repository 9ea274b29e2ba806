"""Minimal safetensors reader/writer: one tensor at a time, bf16 via ml_dtypes, no torch.

Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from gemmax.errors import GemmaxError

DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}
_CODES = {np.dtype(v): k for k, v in DTYPES.items()}


# The format's own limit on the JSON header (safetensors refuses larger ones too).
MAX_HEADER_BYTES = 100 << 20


def check_header(header, path: str, data_bytes: int) -> dict:
  """Checks a parsed header against the format completely and returns its tensor entries.

  Every entry names a known dtype, a shape of non-negative ints and [begin, end] offsets whose
  span is the shape's bytes; sorted by offset the spans tile the data section exactly (no
  overlap, no hole, nothing past the end or left over), as the safetensors library requires.
  A file cut short, offsets pointing past the end or a dtype rewritten to another width fail
  here, naming the file and tensor, before any tensor is read.
  """
  if not isinstance(header, dict):
    raise GemmaxError(
      f"{path}: safetensors header is a JSON {type(header).__name__}, not an object"
    )
  meta = header.get("__metadata__", {}) or {}
  if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
    raise GemmaxError(f"{path}: safetensors __metadata__ must map names to strings")
  entries = {k: v for k, v in header.items() if k != "__metadata__"}
  spans = []
  for name, info in entries.items():
    where = f"{path}: tensor {name}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
      keys = sorted(info) if isinstance(info, dict) else type(info).__name__
      raise GemmaxError(
        f"{where}: header entry must have exactly dtype, shape and data_offsets (has {keys})"
      )
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPES:
      raise GemmaxError(f"{where}: unsupported dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
      raise GemmaxError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if (
      not isinstance(offsets, list)
      or len(offsets) != 2
      or not all(map(_is_count, offsets))
      or offsets[0] > offsets[1]
    ):
      raise GemmaxError(
        f"{where}: data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end"
      )
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != nbytes:
      raise GemmaxError(
        f"{where}: {dtype} {tuple(shape)} needs {nbytes} bytes but its "
        f"data_offsets span {offsets[1] - offsets[0]}"
      )
    spans.append((offsets[0], offsets[1], name))
  at = 0
  for begin, end, name in sorted(spans):
    if begin != at:
      what = "overlaps the tensor before it" if begin < at else f"leaves bytes {at}-{begin} unused"
      raise GemmaxError(f"{path}: tensor {name}: data_offsets {[begin, end]} {what}")
    at = end
  if at != data_bytes:
    last = max(spans)[2] if spans else None
    raise GemmaxError(
      f"{path}: the header's tensors end at byte {at} of the data section but the file holds "
      f"{data_bytes} data bytes ({'truncated' if at > data_bytes else 'trailing bytes'}"
      f"{f', last tensor {last}' if last else ''})"
    )
  return entries


def _is_count(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class SafetensorsFile:
  """Lazily reads tensors from one .safetensors file; `get(name)` reads only that tensor.

  The header is validated completely on open (`check_header`) and each read checks that it got
  every byte the header promised (a file truncated after opening)."""

  def __init__(self, path: str):
    self.path = path
    try:
      size = os.path.getsize(path)
      with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
          raise GemmaxError(f"{size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
          raise GemmaxError(
            f"header length {n} exceeds the file ({size} bytes) or the "
            f"format's {MAX_HEADER_BYTES}-byte limit"
          )
        header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, ValueError) as e:  # (JSON and UTF-8 errors are ValueErrors)
      raise GemmaxError(f"{path}: not a readable safetensors file ({e})") from None
    self.header = check_header(header, path, size - 8 - n)
    self.metadata = header.get("__metadata__", {}) or {}
    self._data_start = 8 + n

  def keys(self) -> list[str]:
    return list(self.header)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.header[name]["shape"])

  def dtype(self, name: str) -> str:
    """The stored dtype's safetensors code (F32, BF16, ...)."""
    return self.header[name]["dtype"]

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    begin, end = info["data_offsets"]
    out = np.empty(tuple(info["shape"]), dtype=np.dtype(DTYPES[info["dtype"]]))
    with open(self.path, "rb") as f:  # plain reads: no mmap pages held after the copy
      f.seek(self._data_start + begin)
      got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    if got != end - begin:
      raise GemmaxError(
        f"{self.path}: tensor {name}: read {got} of its {end - begin} bytes "
        "(the file changed or was cut short after it was opened)"
      )
    return out


def save_file(tensors, path: str, metadata=None) -> None:
  """Writes a dict / iterable of (name, array) to `path` atomically."""
  items = list(tensors.items() if isinstance(tensors, dict) else tensors)
  save_lazy([(n, a.shape, a.dtype, (lambda a=a: a)) for n, a in items], path, metadata)


def save_lazy(specs, path: str, metadata=None) -> None:
  """Writes [(name, shape, dtype, make_array)] atomically, producing one array at a time.

  The header is built from shapes first, so a model larger than host memory can be written
  tensor by tensor.
  """
  header, offset = {}, 0
  for name, shape, dtype, _ in specs:
    dt = np.dtype(dtype)
    if dt not in _CODES:
      raise GemmaxError(f"tensor {name}: dtype {dt} cannot be stored in safetensors")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    header[name] = {
      "dtype": _CODES[dt],
      "shape": list(shape),
      "data_offsets": [offset, offset + nbytes],
    }
    offset += nbytes
  header["__metadata__"] = {"format": "pt", **(metadata or {})}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(struct.pack("<Q", len(blob)))
      f.write(blob)
      for name, shape, dtype, make in specs:
        arr = np.ascontiguousarray(make(), dtype=np.dtype(dtype))
        if arr.shape != tuple(shape):
          raise GemmaxError(f"tensor {name}: produced shape {arr.shape}, declared {tuple(shape)}")
        f.write(arr.tobytes())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
