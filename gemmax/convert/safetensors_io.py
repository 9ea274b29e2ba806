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

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_CODES = {np.dtype(v): k for k, v in DTYPES.items()}


class SafetensorsFile:
  """Lazily reads tensors from one .safetensors file; `get(name)` reads only that tensor."""

  def __init__(self, path: str):
    self.path = path
    try:
      with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
      raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    self.metadata = header.pop("__metadata__", {}) or {}
    self.header = header
    self._data_start = 8 + n

  def keys(self) -> list[str]:
    return list(self.header)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.header[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    if info["dtype"] not in DTYPES:
      raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
    dtype = np.dtype(DTYPES[info["dtype"]])
    begin, end = info["data_offsets"]
    out = np.empty(tuple(info["shape"]), dtype=dtype)
    if out.nbytes != end - begin:
      raise ValueError(f"{self.path}: tensor {name} has {end - begin} bytes, expected {out.nbytes}")
    with open(self.path, "rb") as f:  # plain reads: no mmap pages held after the copy
      f.seek(self._data_start + begin)
      f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
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
      raise ValueError(f"tensor {name}: dtype {dt} cannot be stored in safetensors")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    header[name] = {"dtype": _CODES[dt], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
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
          raise ValueError(f"tensor {name}: produced shape {arr.shape}, declared {tuple(shape)}")
        f.write(arr.tobytes())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
