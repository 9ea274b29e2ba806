"""Loading what an evaluation or chat runs on: a model source (HF dir, .gguf file or registry
name), optionally with a fine-tuning workdir's adapter (HF PEFT format) on top, plus its
tokenizer. A finetune workdir given as the model is its base plus its adapter."""

from __future__ import annotations

import json
import os

from gemmax.errors import GemmaxError


def is_workdir(path: str) -> bool:
  """A finetune workdir: its run config.json and an adapter/ written at the end of the run."""
  return os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(
    os.path.join(path, "adapter", "adapter_config.json")
  )


def resolve_adapter(adapter: str) -> tuple[str, dict]:
  """An adapter dir, or a finetune workdir holding `adapter/`; returns (dir, workdir config)."""
  run_cfg = {}
  if is_workdir(adapter):
    with open(os.path.join(adapter, "config.json"), encoding="utf-8") as f:
      try:
        run_cfg = json.load(f)
      except ValueError as e:
        raise GemmaxError(f"{adapter}/config.json: not valid JSON ({e})") from None
    adapter = os.path.join(adapter, "adapter")
  if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
    raise FileNotFoundError(
      f"{adapter}: no adapter_config.json (expected an HF PEFT adapter dir "
      f"or a finetune workdir with adapter/)"
    )
  return adapter, run_cfg


def load_model(
  path: str = "",
  adapter: str = "",
  dtype: str = "float32",
  quantize: str = "",
  merge: bool = False,
  with_config: bool = False,
):
  """(model, base source[, run config]). `path` is an HF dir, a .gguf file, a registry name or a
  finetune workdir (its base + adapter); "" takes the base from the adapter workdir's config."""
  from gemmax import peft
  from gemmax.convert import load

  if path and not adapter and is_workdir(path):
    path, adapter = "", path
  run_cfg = {}
  if adapter:
    adapter, run_cfg = resolve_adapter(adapter)
  path = path or run_cfg.get("model", {}).get("path", "")
  if not path:
    raise GemmaxError("model.path is empty and no adapter workdir names a base model")
  model = load(path, compute_dtype=dtype or None)
  quantize = quantize or run_cfg.get("quantize") or ""
  if quantize:
    if quantize != "nf4":
      raise GemmaxError(f"quantize {quantize!r} is not '' or 'nf4'")
    peft.quantize_model(model)
  if adapter:
    peft.load_adapter(model, adapter)
    if merge:
      peft.merge(model)
  return (model, path, run_cfg) if with_config else (model, path)


def load_tokenizer_for(path: str, tokenizer: str = ""):
  from gemmax.data import load_tokenizer

  return load_tokenizer(tokenizer or path)


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
