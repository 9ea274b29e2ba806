"""The teacher top-k store: ArrayRecord shards of per-token teacher distributions + a manifest.

    store/
      manifest.json                         what was stored and from what (see `identity`)
      shard-00000-of-00004.array_record     one record per example
      shard-00000-of-00004.json             written after its shard: the shard is complete

One record = one tokenized example of n positions (n <= seq_len), little-endian:
  uint32 n | int32 tokens[n + 1] | uint8 packbits(loss_mask[n]) |
  int32 topk_ids[s, k] | float16 topk_probs[s, k] | float16 tail[s]
where s = sum(loss_mask): only scored positions carry a teacher distribution. input_ids =
tokens[:-1], targets = tokens[1:]. Per scored position that is 6k + 2 bytes, plus 4.125 per
position and 8 per record: <= 6k + 8 bytes per token for any example of >= 5 tokens (before
ArrayRecord's own compression, which only shrinks it). `tail` = 1 - sum(topk_probs), the
teacher's mass outside the k ids, kept so the loss sees the full distribution's coarse shape.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from typing import Sequence

import numpy as np

from gemmax.errors import GemmaxError

FORMAT = "gemmax-topk-v1"
MANIFEST = "manifest.json"
RECORD_OPTIONS = "group_size:1,zstd:3"  # one record per chunk: cheap random access from grain
SAMPLING = ("topk", "gumbel")


class StoreError(GemmaxError):
  """A store that is missing, incomplete, or does not match the run that reads or extends it."""


# --- records ------------------------------------------------------------------------------------
def encode_record(tokens, loss_mask, topk_ids, topk_probs, tail) -> bytes:
  """tokens [n + 1]; loss_mask [n]; topk_ids/topk_probs [n, k] and tail [n] (only the scored
  rows are kept) -> bytes."""
  tokens = np.asarray(tokens, np.int32)
  mask = np.asarray(loss_mask).astype(bool)
  n = len(mask)
  if len(tokens) != n + 1:
    raise GemmaxError(f"encode_record: {len(tokens)} tokens for {n} positions (need n + 1)")
  return b"".join(
    [
      np.uint32(n).tobytes(),
      tokens.tobytes(),
      np.packbits(mask).tobytes(),
      np.asarray(topk_ids, np.int32)[mask].tobytes(),
      np.asarray(topk_probs, np.float16)[mask].tobytes(),
      np.asarray(tail, np.float16)[mask].tobytes(),
    ]
  )


def decode_record(data: bytes, k: int) -> dict:
  """bytes -> {input_ids, targets, loss_mask [n] int32, topk_ids [n, k] int32, topk_probs [n, k]
  float16, topk_tail [n] float16}; unscored positions hold zeros."""
  buf = memoryview(data)
  n = int(np.frombuffer(buf[:4], np.uint32)[0])
  off = 4
  take = lambda count, dt: np.frombuffer(buf[off : off + count * np.dtype(dt).itemsize], dt)
  tokens = take(n + 1, np.int32)
  off += (n + 1) * 4
  nbits = (n + 7) // 8
  mask = np.unpackbits(np.frombuffer(buf[off : off + nbits], np.uint8), count=n).astype(bool)
  off += nbits
  s = int(mask.sum())
  if len(data) != off + s * (6 * k + 2):
    raise StoreError(
      f"record of {len(data)} bytes does not parse with k={k} (expected {off + s * (6 * k + 2)})"
    )
  ids = take(s * k, np.int32).reshape(s, k)
  off += s * k * 4
  probs = take(s * k, np.float16).reshape(s, k)
  off += s * k * 2
  tail = take(s, np.float16)
  out = {
    "input_ids": tokens[:-1].copy(),
    "targets": tokens[1:].copy(),
    "loss_mask": mask.astype(np.int32),
    "topk_ids": np.zeros((n, k), np.int32),
    "topk_probs": np.zeros((n, k), np.float16),
    "topk_tail": np.zeros((n,), np.float16),
  }
  out["topk_ids"][mask], out["topk_probs"][mask], out["topk_tail"][mask] = ids, probs, tail
  return out


# --- fingerprints -------------------------------------------------------------------------------
def _hash_file(h, path: str, whole_below: int = 64 << 20):
  """Feeds a file to `h`: all of it when small, else its size and first/last 16 MiB."""
  size = os.path.getsize(path)
  h.update(f"{os.path.basename(path)}:{size}:".encode())
  with open(path, "rb") as f:
    if size <= whole_below:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    else:
      h.update(f.read(16 << 20))
      f.seek(size - (16 << 20))
      h.update(f.read())


def source_files(path) -> list[str]:
  """A file, glob or list of them -> the sorted list of files (as gemmax.data reads them)."""
  paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
  out = []
  for p in map(os.fspath, paths):
    hits = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
    if not hits or not all(os.path.isfile(x) for x in hits):
      raise FileNotFoundError(f"data file not found: {p}")
    out += hits
  return out


def dataset_fingerprint(sources) -> str:
  """sha256 of the data files' bytes and how they are read (kind, template, fields)."""
  from gemmax.data import SourceSpec

  specs = [sources] if isinstance(sources, SourceSpec) else list(sources)
  h = hashlib.sha256()
  for spec in specs:
    h.update(
      json.dumps(
        [
          spec.kind,
          spec.format,
          spec.template,
          sorted(spec.fields.items()),
          spec.instruction,
          repr(spec.label_words),
        ]
      ).encode()
    )
    for path in source_files(spec.path):
      _hash_file(h, path)
  return h.hexdigest()


def model_fingerprint(directory: str) -> str:
  """sha256 of an HF checkpoint directory's config.json and *.safetensors files."""
  files = [os.path.join(directory, "config.json")] + sorted(
    glob.glob(os.path.join(directory, "*.safetensors"))
  )
  h = hashlib.sha256()
  for path in files:
    if os.path.isfile(path):
      _hash_file(h, path)
  return h.hexdigest()


# --- manifest -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StoreSpec:
  """Everything that determines a store's contents; two runs with equal specs write equal bytes."""

  teacher: str  # teacher fingerprint (model_fingerprint) or another stable id
  tokenizer: str  # tokenizer fingerprint (sha256 of its file)
  dataset: str  # dataset_fingerprint
  k: int
  temperature: float = 1.0
  sampling: str = "topk"  # topk: the k most likely ids; gumbel: k ids sampled w/o replacement
  seed: int = 0  # gumbel sampling key
  seq_len: int = 512  # examples are cut to this many positions (right truncation)
  num_shards: int = 1

  def validate(self):
    if self.k < 1:
      raise StoreError(f"k must be >= 1, got {self.k}")
    if not self.temperature > 0:
      raise StoreError(f"temperature must be > 0, got {self.temperature}")
    if self.sampling not in SAMPLING:
      raise StoreError(f"sampling must be one of {SAMPLING}, got {self.sampling!r}")
    if self.num_shards < 1 or self.seq_len < 2:
      raise StoreError(
        f"need num_shards >= 1 and seq_len >= 2, got {self.num_shards}, {self.seq_len}"
      )
    return self


def shard_name(i: int, n: int) -> str:
  return f"shard-{i:05d}-of-{n:05d}.array_record"


def read_manifest(directory: str) -> dict | None:
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except ValueError as e:  # JSON or UTF-8
    raise StoreError(f"{path}: not a readable JSON manifest ({e})") from None
  if not isinstance(manifest, dict):
    raise StoreError(f"{path}: the manifest is a JSON {type(manifest).__name__}, not an object")
  if manifest.get("format") != FORMAT:
    raise StoreError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
  spec = manifest.get("spec")
  fields = {f.name: f.type for f in dataclasses.fields(StoreSpec)}
  if not isinstance(spec, dict) or set(spec) != set(fields):
    raise StoreError(f"{path}: spec must be an object with exactly {', '.join(fields)}")
  for name, kind in (
    ("k", int),
    ("seed", int),
    ("seq_len", int),
    ("num_shards", int),
    ("temperature", (int, float)),
    ("teacher", str),
    ("tokenizer", str),
    ("dataset", str),
    ("sampling", str),
  ):
    if not isinstance(spec[name], kind) or isinstance(spec[name], bool):
      raise StoreError(f"{path}: spec.{name} {spec[name]!r} has the wrong type")
  try:
    StoreSpec(**spec).validate()
  except StoreError as e:
    raise StoreError(f"{path}: spec: {e}") from None
  for key in ("teacher", "tokenizer", "dataset"):
    if not isinstance(manifest.get(key), dict):
      raise StoreError(f"{path}: {key} must be an object")
  if manifest.get("complete"):
    stats = manifest.get("stats")
    if (
      not isinstance(stats, dict)
      or not isinstance(stats.get("examples"), int)
      or stats["examples"] < 1
    ):
      raise StoreError(f"{path}: a complete store needs stats.examples >= 1")
  return manifest


def shard_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def check_shards(directory: str, paths: Sequence[str], examples: int) -> None:
  """Every shard as its writer left it: the byte count (and sha256, for stores that record it)
  of its sidecar, and as many records as the sidecar says, summing to the manifest's count. A
  shard cut short, grown, rewritten or swapped fails here, naming it, before any training."""
  from array_record.python.array_record_data_source import ArrayRecordDataSource

  total = 0
  for path in paths:
    side = path.replace(".array_record", ".json")
    try:
      with open(side, encoding="utf-8") as f:
        info = json.load(f)
      want_bytes, want_records = int(info["bytes"]), int(info["examples"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise StoreError(f"{side}: shard record unreadable ({type(e).__name__}: {e})") from None
    size = os.path.getsize(path)
    if size != want_bytes:
      raise StoreError(
        f"{path}: {size} bytes, its writer recorded {want_bytes} (truncated or changed)"
      )
    if info.get("sha256") and shard_sha256(path) != info["sha256"]:
      raise StoreError(f"{path}: sha256 differs from the one its writer recorded (corrupt)")
    try:
      source = ArrayRecordDataSource([path])
      got = len(source)
    except Exception as e:  # noqa: BLE001 -- array_record raises RuntimeError/ValueError variants
      raise StoreError(f"{path}: not a readable ArrayRecord shard ({type(e).__name__})") from None
    if got != want_records:
      raise StoreError(f"{path}: {got} records, its writer recorded {want_records}")
    total += got
  if total != examples:
    raise StoreError(f"{directory}: the shards hold {total} records, the manifest says {examples}")


def write_json(path: str, obj) -> None:
  """Write-then-rename: a reader never sees half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def mismatches(stored: dict, wanted: dict, keys: Sequence[str]) -> list[str]:
  return [
    f"{k}: store has {stored.get(k)!r}, this run has {wanted.get(k)!r}"
    for k in keys
    if stored.get(k) != wanted.get(k)
  ]


# --- reading ------------------------------------------------------------------------------------
class TopKStore:
  """A complete store, opened for reading. `check(...)` fails clearly on mismatches."""

  def __init__(self, directory: str):
    self.directory = directory
    manifest = read_manifest(directory)
    if manifest is None:
      raise StoreError(f"{directory}: no {MANIFEST} (run the teacher stage first)")
    if not manifest.get("complete"):
      done = len(glob.glob(os.path.join(directory, "shard-*.json")))
      raise StoreError(
        f"{directory}: the store is incomplete ({done} of "
        f"{manifest['spec']['num_shards']} shards written); rerun the teacher "
        f"stage to finish it"
      )
    self.manifest = manifest
    self.spec = StoreSpec(**manifest["spec"])
    self.paths = [
      os.path.join(directory, shard_name(i, self.spec.num_shards))
      for i in range(self.spec.num_shards)
    ]
    missing = [p for p in self.paths if not os.path.isfile(p)]
    if missing:
      raise StoreError(f"{directory}: shard files missing: {', '.join(missing[:3])}")
    check_shards(directory, self.paths, int(manifest["stats"]["examples"]))

  @property
  def k(self) -> int:
    return self.spec.k

  @property
  def temperature(self) -> float:
    return self.spec.temperature

  def __len__(self) -> int:
    return int(self.manifest["stats"]["examples"])

  def check(self, *, tokenizer=None, dataset: str | None = None, vocab_size: int | None = None):
    """Raises StoreError unless the store was written with this tokenizer (a gemmax.data
    Tokenizer or its fingerprint) and dataset fingerprint, and fits a `vocab_size` model."""
    if tokenizer is not None:
      fp = getattr(tokenizer, "fingerprint", tokenizer)
      if fp != self.spec.tokenizer:
        raise StoreError(
          f"{self.directory}: tokenizer mismatch: the teacher's top-k ids were written with "
          f"tokenizer {self.manifest['tokenizer'].get('path')} (sha256 {self.spec.tokenizer[:12]}"
          f"...), but the student uses {getattr(tokenizer, 'path', '')} (sha256 {fp[:12]}...); "
          f"ids would mean different tokens"
        )
    if dataset is not None and dataset != self.spec.dataset:
      raise StoreError(
        f"{self.directory}: dataset mismatch: the store was written from "
        f"{self.manifest['dataset'].get('sources')} (fingerprint {self.spec.dataset[:12]}...), "
        f"but this run's data has fingerprint {dataset[:12]}...; rerun the teacher stage on "
        f"this data or point data.train at the stored dataset"
      )
    teacher_vocab = self.manifest["teacher"].get("vocab_size", 0)
    if vocab_size is not None and teacher_vocab > vocab_size:
      raise StoreError(
        f"{self.directory}: teacher vocabulary {teacher_vocab} does not fit a "
        f"student with vocab_size {vocab_size}"
      )
    return self

  def source(self):
    """A grain random-access source over every record (bytes)."""
    import grain

    return grain.sources.ArrayRecordDataSource(self.paths)

  def example(self, i: int) -> dict:
    return decode_record(self.source()[i], self.k)
