"""Loading what an evaluation runs on: a model (HF dir, .gguf file or registry name, optionally
NF4-quantized with an HF PEFT adapter on top) and the rows of a labeled file."""

from __future__ import annotations

import json

from gemmax.errors import GemmaxError


def load_model(
  source: str, adapter: str = "", dtype: str = "float32", quantize: str = "", merge: bool = False
):
  """The model of `source` (HF dir, .gguf file or registry name) at compute `dtype`; its base
  quantized to NF4 for quantize="nf4" (as a QLoRA run trained it), and the HF PEFT adapter in the
  directory `adapter` loaded on top (merged into the weights with `merge`)."""
  from gemmax import peft
  from gemmax.convert import load

  model = load(source, compute_dtype=dtype or None)
  if quantize:
    if quantize != "nf4":
      raise GemmaxError(f"quantize {quantize!r} is not '' or 'nf4'")
    peft.quantize_model(model)
  if adapter:
    peft.load_adapter(model, adapter)
    if merge:
      peft.merge(model)
  return model


def read_records(path: str, limit: int = 0) -> list[dict]:
  """Alpaca rows {instruction, input, output} of a JSONL/CSV/Parquet file, checked as training
  checks them (a bad row fails naming file and row), outputs stripped; the first `limit` rows."""
  from gemmax.data import SourceSpec, load_records

  records, _ = load_records(SourceSpec(path, kind="alpaca"), on_bad_rows="fail")
  records = [{**r, "output": str(r["output"]).strip()} for r in records]
  return records[:limit] if limit else records


def read_labeled(path: str, fmt: str = "alpaca", limit: int = 0) -> list[tuple[str, str]]:
  """(prompt, label) pairs from a JSONL file: Alpaca rows (the prompt is rendered exactly as
  training renders it, the label is `output`) or text/label rows."""
  from gemmax.data.formats import alpaca_prompt

  if fmt not in ("alpaca", "text_label"):
    raise GemmaxError(f"format {fmt!r} is not alpaca|text_label")
  keys = ("instruction", "output") if fmt == "alpaca" else ("text", "label")
  pairs = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise GemmaxError(f"{path}:{n}: not valid JSON ({e.msg})") from None
      missing = [k for k in keys if not isinstance(row, dict) or k not in row]
      if missing:
        raise GemmaxError(f"{path}:{n}: row lacks field(s) {missing} for format {fmt!r}")
      if fmt == "alpaca":
        pairs.append(
          (alpaca_prompt(row["instruction"], row.get("input", "")), str(row["output"]).strip())
        )
      else:
        pairs.append((str(row["text"]), str(row["label"])))
      if limit and len(pairs) >= limit:
        break
  if not pairs:
    raise GemmaxError(f"{path}: no rows")
  return pairs
