"""Corrupt safetensors files and indexes are refused on open, naming file and tensor: a file cut
short, offsets past the end, overlapping or gapped spans, a dtype rewritten in the header, a
header that is not an object or claims more bytes than the file. Nothing corrupt ever loads."""

import json
import os
import struct

import numpy as np
import pytest

from gemmax.convert.hf import Checkpoint, load_hf, save_hf
from gemmax.io.safetensors import SafetensorsFile, save_file


def _write(path, header, data: bytes):
  blob = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob + data)


def _good(tmp_path):
  path = str(tmp_path / "w.safetensors")
  save_file(
    {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((4,), np.float16)}, path
  )
  with open(path, "rb") as f:
    raw = f.read()
  (n,) = struct.unpack("<Q", raw[:8])
  return path, json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _refused(path, *needles):
  with pytest.raises(ValueError) as e:
    SafetensorsFile(path)
  msg = str(e.value)
  assert "\n" not in msg and path in msg, msg
  for s in needles:
    assert s in msg, msg


def test_good_file_reads_back(tmp_path):
  path, _, _ = _good(tmp_path)
  st = SafetensorsFile(path)
  np.testing.assert_array_equal(st.get("a"), np.arange(6, dtype=np.float32).reshape(2, 3))
  assert st.dtype("b") == "F16" and st.shape("b") == (4,)


@pytest.mark.parametrize("cut", [1, 7, "half"])
def test_truncated_file(tmp_path, cut):
  path, _, _ = _good(tmp_path)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2 if cut == "half" else size - cut)
  _refused(path)


def test_trailing_bytes(tmp_path):
  path, header, data = _good(tmp_path)
  _write(path, header, data + b"\0" * 8)
  _refused(path, "trailing")


def test_offsets_past_the_end(tmp_path):
  path, header, data = _good(tmp_path)
  begin, end = header["b"]["data_offsets"]
  header["b"]["data_offsets"] = [begin + 64, end + 64]
  _write(path, header, data)
  _refused(path, "tensor b")


def test_overlapping_spans(tmp_path):
  path, header, data = _good(tmp_path)
  header["b"]["data_offsets"] = [16, 24]  # inside a's 24 bytes
  header["b"]["shape"] = [4]
  _write(path, header, data)
  _refused(path, "overlaps")


@pytest.mark.parametrize("dtype,shape", [("F16", [2, 3]), ("F64", [2, 3]), ("I8", [2, 3])])
def test_dtype_rewritten_to_another_width(tmp_path, dtype, shape):
  path, header, data = _good(tmp_path)
  header["a"]["dtype"], header["a"]["shape"] = dtype, shape
  _write(path, header, data)
  _refused(path, "tensor a", "bytes")


@pytest.mark.parametrize(
  "mutate,needle",
  [
    (lambda h: h["a"].update(dtype="Q4"), "unsupported dtype"),
    (lambda h: h["a"].pop("data_offsets"), "data_offsets"),
    (lambda h: h["a"].update(shape=[2, -3]), "shape"),
    (lambda h: h["a"].update(shape="2x3"), "shape"),
    (lambda h: h["a"].update(data_offsets=[24, 0]), "data_offsets"),
    (lambda h: h["a"].update(data_offsets=[0, 24, 48]), "data_offsets"),
    (lambda h: h.update(__metadata__={"format": 1}), "__metadata__"),
    (lambda h: h.update(a=[1, 2]), "tensor a"),
  ],
)
def test_malformed_entries(tmp_path, mutate, needle):
  path, header, data = _good(tmp_path)
  mutate(header)
  _write(path, header, data)
  _refused(path, needle)


def test_header_not_an_object(tmp_path):
  path, _, data = _good(tmp_path)
  _write(path, [1, 2, 3], data)
  _refused(path, "not an object")


@pytest.mark.parametrize("head", [struct.pack("<Q", 1 << 62), struct.pack("<Q", 10**6), b"\1\2"])
def test_header_length_beyond_the_file(tmp_path, head):
  path = str(tmp_path / "x.safetensors")
  with open(path, "wb") as f:
    f.write(head + b"{}" * 10)
  _refused(path)


def test_header_not_utf8_json(tmp_path):
  path = str(tmp_path / "x.safetensors")
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", 4) + b"\xff\xfe{}")
  _refused(path, "not a readable safetensors file")


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
  from flax import nnx

  from gemmax.models.config import ModelConfig
  from gemmax.models.transformer import Transformer

  cfg = ModelConfig.preset("llama3-tiny")
  d = str(tmp_path_factory.mktemp("ckpt"))
  save_hf(Transformer(cfg, rngs=nnx.Rngs(0)), d, max_shard_bytes=1 << 16)
  assert os.path.isfile(os.path.join(d, "model.safetensors.index.json"))
  return d


def _copy(src, dst):
  import shutil

  shutil.copytree(src, dst)
  return str(dst)


def _edit_index(d, fn):
  p = os.path.join(d, "model.safetensors.index.json")
  with open(p) as f:
    data = json.load(f)
  data = fn(data)
  with open(p, "w") as f:
    json.dump(data, f)
  return p


def _move(index: dict, name: str) -> dict:
  """The index with `name` mapped to a shard that does not hold it."""
  wm = dict(index["weight_map"])
  wm[name] = next(fn for fn in sorted(set(wm.values())) if fn != wm[name])
  return {**index, "weight_map": wm}


@pytest.mark.parametrize(
  "edit,needle",
  [
    (lambda d: [], "weight_map"),
    (lambda d: {"metadata": {}}, "weight_map"),
    (
      lambda d: {**d, "weight_map": {k: "../x.safetensors" for k in d["weight_map"]}},
      "checkpoint directory",
    ),
    (
      lambda d: {**d, "weight_map": {k: "gone.safetensors" for k in d["weight_map"]}},
      "does not exist",
    ),
    (lambda d: _move(d, "model.norm.weight"), "does not hold it"),
  ],
)
def test_bad_index(sharded_dir, tmp_path, edit, needle):
  d = _copy(sharded_dir, tmp_path / "c")
  index = _edit_index(d, edit)
  with pytest.raises(ValueError) as e:
    Checkpoint(d)
  assert index in str(e.value) and needle in str(e.value), e.value


def test_integer_weights_are_refused(sharded_dir, tmp_path):
  """A dtype rewritten to one of the same width (F32 -> I32) passes the size checks; a model
  weight stored as integers is refused by the loader, naming the tensor."""
  d = _copy(sharded_dir, tmp_path / "c")
  with open(os.path.join(d, "model.safetensors.index.json")) as f:
    fn = json.load(f)["weight_map"]["model.norm.weight"]
  path = os.path.join(d, fn)
  with open(path, "rb") as f:
    raw = f.read()
  (n,) = struct.unpack("<Q", raw[:8])
  header = json.loads(raw[8 : 8 + n])
  assert header["model.norm.weight"]["dtype"] == "F32"
  header["model.norm.weight"]["dtype"] = "I32"
  _write(path, header, raw[8 + n :])
  with pytest.raises(ValueError, match="model.norm.weight is stored as I32"):
    load_hf(d, dtype="float32")


def test_non_finite_weights_are_refused(sharded_dir, tmp_path):
  d = _copy(sharded_dir, tmp_path / "c")
  with open(os.path.join(d, "model.safetensors.index.json")) as f:
    fn = json.load(f)["weight_map"]["model.norm.weight"]
  st = SafetensorsFile(os.path.join(d, fn))
  tensors = {k: st.get(k) for k in st.keys()}
  tensors["model.norm.weight"][3] = np.nan
  save_file(tensors, os.path.join(d, fn))
  with pytest.raises(ValueError, match="model.norm.weight holds non-finite"):
    load_hf(d, dtype="float32")
