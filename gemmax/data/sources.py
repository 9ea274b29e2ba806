"""Sources: JSONL, CSV, Parquet and tfds rows -> validated canonical records (see formats.py).

A `SourceSpec` names a file (or glob, or list), its format, the example kind and the field names. Rows are read
into memory once in the main process and checked there, so bad rows are reported with their row numbers before
training starts: missing field, non-string field, empty response, invalid UTF-8 (and undecodable JSON).
`on_bad_rows="skip"` drops and reports them; `"fail"` raises naming the first ones. Row numbers are 1-based:
the line number for JSONL, the data row (header excluded) for CSV, Parquet and tfds.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import io
import json
import logging
import os
from typing import Any

from gemmax.data.chat import TEMPLATES, chat_segments, jinja_source
from gemmax.data.formats import KINDS, classification_to_alpaca, resolve_template
from gemmax.errors import GemmaxError

__all__ = ["SourceSpec", "BadRows", "load_records", "load_numbered", "read_rows"]

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv", "parquet", "tfds")
_CANONICAL = {
  "alpaca": ("instruction", "input", "output"),
  "chat": ("messages",),
  "text": ("text",),
  "classification": ("text", "label"),
}


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """path: file, glob or list of files (for tfds: a dataset name under data_dir, or the directory of one
  prepared dataset version); format: jsonl|csv|parquet|tfds (inferred from the extension when None); kind:
  alpaca|chat|text|classification; fields: canonical name -> column name (e.g. {"output": "response"});
  template: None (or "") for the kind's default ("alpaca" prompt for Alpaca and classification rows, "gemma"
  for chat rows), or "gemma" | "llama3" | "model" (the tokenizer's own) | a jinja string -- for Alpaca rows
  too, which then become one-turn chats (formats.py); instruction/label_words: for classification."""

  path: Any
  kind: str = "alpaca"
  format: str | None = None
  fields: dict = dataclasses.field(default_factory=dict)
  template: str | None = None
  instruction: str = "Classify the text."
  label_words: Any = None
  split: str = "train"  # tfds only
  data_dir: str | None = None  # tfds only

  def __post_init__(self):
    if self.kind not in KINDS:
      raise GemmaxError(f"unknown source kind {self.kind!r}; expected one of {KINDS}")
    if self.format is not None and self.format not in FORMATS:
      raise GemmaxError(f"unknown source format {self.format!r}; expected one of {FORMATS}")
    if self.template == "":
      object.__setattr__(self, "template", None)
    resolve_template(self.kind, self.template)  # raises on a template this kind cannot use
    if self.kind == "classification" and self.label_words is None:
      raise GemmaxError("a classification source needs label_words (e.g. ['negative', 'positive'])")


@dataclasses.dataclass
class BadRows:
  """Rows dropped (or that failed) with their reason: rows[i] = (file, row_number, reason)."""

  rows: list = dataclasses.field(default_factory=list)

  @property
  def count(self) -> int:
    return len(self.rows)

  @property
  def counts(self) -> dict:
    return dict(collections.Counter(r.split(":")[0] for _, _, r in self.rows))

  def summary(self, limit: int = 10) -> str:
    head = "; ".join(f"{f} row {n}: {r}" for f, n, r in self.rows[:limit])
    more = f"; ... and {self.count - limit} more" if self.count > limit else ""
    return f"{self.count} bad rows {self.counts}: {head}{more}"


def _files(spec: SourceSpec) -> list[str]:
  paths = [spec.path] if isinstance(spec.path, (str, os.PathLike)) else list(spec.path)
  out = []
  for p in map(os.fspath, paths):
    hits = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
    if not hits:
      raise FileNotFoundError(f"no data files match {p}")
    out += hits
  for p in out:
    if os.path.isdir(p):
      raise IsADirectoryError(f"data file {p} is a directory; name the file (or a glob) instead")
    if not os.path.isfile(p):
      raise FileNotFoundError(f"data file not found: {p}")
    if os.path.getsize(p) == 0:
      raise GemmaxError(f"data file is empty: {p}")
  return out


def _format_of(spec: SourceSpec, path: str) -> str:
  if spec.format:
    return spec.format
  ext = path.rsplit(".", 1)[-1].lower()
  fmt = {
    "jsonl": "jsonl",
    "json": "jsonl",
    "csv": "csv",
    "parquet": "parquet",
    "pq": "parquet",
  }.get(ext)
  if fmt is None:
    raise GemmaxError(
      f"cannot tell the format of {path} from its extension; set format to one of {FORMATS}"
    )
  return fmt


def read_rows(spec: SourceSpec):
  """Yields (file, row_number, row_dict or None, error or None) for every row of every file."""
  if (spec.format or "") == "tfds":
    yield from _tfds_rows(spec)
    return
  for path in _files(spec):
    fmt = _format_of(spec, path)
    with open(path, "rb") as f:
      data = f.read()
    if fmt == "jsonl":
      for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
          yield path, n, None, "invalid UTF-8"
          continue
        except json.JSONDecodeError as e:
          yield path, n, None, f"invalid JSON: {e.msg}"
          continue
        yield (
          (path, n, row, None) if isinstance(row, dict) else (path, n, None, "not a JSON object")
        )
    elif fmt == "csv":
      # surrogateescape keeps undecodable bytes as lone surrogates, found again in _check_str
      text = data.decode("utf-8", "surrogateescape")
      for n, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), 1):
        yield path, n, row, None
    else:
      import pyarrow.parquet as pq

      for n, row in enumerate(pq.read_table(io.BytesIO(data)).to_pylist(), 1):
        yield path, n, row, None


def _tfds_rows(spec: SourceSpec):
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise ImportError(
      "reading a tfds source needs tensorflow_datasets: pip install 'gemmax[tfds]'"
    ) from None
  name = os.fspath(spec.path)
  where = f"tfds:{name}[{spec.split}]"
  # Never downloads: only data already prepared (array_record or parquet) is read, either a dataset
  # name under data_dir or the directory of one prepared version (the one holding dataset_info.json).
  try:
    if os.path.isdir(name):
      builder = tfds.builder_from_directory(name)
    else:
      builder = tfds.builder(name, data_dir=spec.data_dir)
  except (tfds.core.DatasetNotFoundError, OSError):
    data_dir = spec.data_dir or tfds.core.constants.DATA_DIR
    raise FileNotFoundError(
      f"tfds dataset {name!r} not found under data_dir {data_dir} "
      "(gemmax does not download: prepare it first)"
    ) from None
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"tfds dataset {name!r} is not prepared in {builder.data_dir} "
      "(gemmax does not download: prepare it first with file_format='array_record')"
    )
  try:
    source = builder.as_data_source(split=spec.split)
  except NotImplementedError:
    raise GemmaxError(
      f"{where}: prepared in a sequential format at {builder.data_dir}; prepare it with "
      "file_format='array_record' (or 'parquet') for random access"
    ) from None
  except ValueError as e:  # unknown split
    raise GemmaxError(f"{where}: {e}") from None
  if len(source) == 0:
    raise GemmaxError(f"data split is empty: {where} in {builder.data_dir}")
  for n in range(len(source)):
    yield where, n + 1, dict(source[n]), None


def _check_str(value, name):
  """Returns (string, error). bytes are decoded strictly; strings must encode back to UTF-8."""
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8"), None
    except UnicodeDecodeError:
      return None, f"invalid UTF-8: field {name!r}"
  if not isinstance(value, str):
    return None, f"non-string: field {name!r} is {type(value).__name__}"
  try:
    value.encode("utf-8")
  except UnicodeEncodeError:
    return None, f"invalid UTF-8: field {name!r}"
  return value, None


def canonical_record(row: dict, spec: SourceSpec, tokenizer=None):
  """(record, None) or (None, reason). Reasons start with: missing field, non-string, empty response,
  invalid UTF-8, bad messages, bad label. Chat rows are checked against their template (roles, turn order);
  for "model" and jinja templates only when the tokenizer is given (they may use its special tokens)."""
  col = lambda name: spec.fields.get(name, name)  # noqa: E731
  out = {}
  for name in _CANONICAL[spec.kind]:
    if col(name) not in row or row[col(name)] is None:
      if name == "input":
        out[name] = ""
        continue
      return None, f"missing field: {col(name)!r}"
    value = row[col(name)]
    if name == "label":
      out[name] = (
        int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else value
      )
      continue
    if name == "messages":
      if isinstance(value, (str, bytes)):
        try:
          value = json.loads(value)
        except (ValueError, UnicodeDecodeError):
          return None, f"bad messages: field {col(name)!r} is not a JSON list"
      if not isinstance(value, list) or not value:
        return None, f"bad messages: field {col(name)!r} must be a non-empty list"
      msgs = []
      for m in value:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
          return None, "missing field: a message lacks 'role' or 'content'"
        role, err = _check_str(m["role"], "role")
        content, err2 = _check_str(m["content"], "content")
        if err or err2:
          return None, err or err2
        msgs.append({"role": role, "content": content})
      if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
        return None, "empty response: no non-empty assistant message"
      template = resolve_template("chat", spec.template)
      if template in TEMPLATES or tokenizer is not None:
        try:  # roles and turn order the template accepts: found here, with the row number, not mid-training
          chat_segments(msgs, template, tokenizer=tokenizer)
        except ValueError as e:
          return None, f"bad messages: {e}"
      out[name] = msgs
      continue
    value, err = _check_str(value, col(name))
    if err:
      return None, err
    out[name] = value
  if spec.kind == "alpaca" and not out["output"].strip():
    return None, f"empty response: field {col('output')!r}"
  if spec.kind == "text" and not out["text"].strip():
    return None, f"empty response: field {col('text')!r}"
  if spec.kind == "classification":
    try:
      out = classification_to_alpaca(out["text"], out["label"], spec.instruction, spec.label_words)
    except ValueError as e:
      return None, f"bad label: {e}"
  return out, None


def load_records(
  spec: SourceSpec, on_bad_rows: str = "skip", tokenizer=None
) -> tuple[list[dict], BadRows]:
  """All valid canonical records of a source, and the bad rows. Raises if none is valid. The tokenizer (optional)
  lets chat rows be checked against a "model" or jinja template."""
  rows, bad = load_numbered(spec, on_bad_rows, tokenizer)
  return [rec for _, _, rec in rows], bad


def load_numbered(
  spec: SourceSpec, on_bad_rows: str = "skip", tokenizer=None
) -> tuple[list[tuple], BadRows]:
  """Like load_records, with each record's origin: ([(file, row_number, record), ...], bad rows)."""
  if on_bad_rows not in ("skip", "fail"):
    raise GemmaxError(f"on_bad_rows must be 'skip' or 'fail', got {on_bad_rows!r}")
  template = resolve_template(spec.kind, spec.template)
  if tokenizer is not None and template not in TEMPLATES + ("alpaca", None):
    jinja_source(
      template, tokenizer
    )  # a missing or broken template fails once, here, not on every row
  records, bad = [], BadRows()
  for path, n, row, err in read_rows(spec):
    rec, err = (None, err) if err else canonical_record(row, spec, tokenizer)
    if err:
      bad.rows.append((path, n, err))
    else:
      records.append((path, n, rec))
  return check_rows(spec.path, records, bad, on_bad_rows)


def check_rows(path, records: list, bad: BadRows, on_bad_rows: str, what: str = "rows"):
  """(records, bad) after the bad-row policy: "fail" raises naming the first bad rows, "skip"
  logs them; no valid record at all raises."""
  if bad.count and on_bad_rows == "fail":
    raise GemmaxError(f"{path}: {bad.summary(limit=3)} (set on_bad_rows='skip' to drop them)")
  if bad.count:
    log.warning("skipped %s", bad.summary())
  if not records:
    raise GemmaxError(f"no valid {what} in {path}" + (f": {bad.summary(3)}" if bad.count else ""))
  return records, bad
