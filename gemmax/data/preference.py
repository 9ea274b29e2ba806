"""Preference pairs for DPO: rows `{prompt, chosen, rejected}` -> token batches of whole pairs.

A row holds either three strings (the prompt is an Alpaca instruction, or a one-turn user message
under a chat template, and each completion its answer), or message lists: `prompt` a list of
`{role, content}` turns ending with a user turn, `chosen` / `rejected` an assistant message, a
list holding one, or a string. Both completions are rendered the way fine-tuning renders
examples (gemmax.data.formats: template "alpaca", "gemma", "llama3", "model" or a jinja string),
so prompt tokens, the template's markup and padding carry no loss; the answer and the end of turn
that closes it do. Rows are checked before any batch is made (missing field, non-string, empty or
identical completions, bad messages), each bad row named by file and row number.

Batches never split a pair: `preference_batches` yields [B, 2, T] arrays, [:, 0] the chosen and
[:, 1] the rejected completion of each of B pairs (pairs first, so that micro-batches and
data-parallel shards, which split the leading axis, keep pairs whole), with the fields of the
training batch contract (input_ids, targets, loss_mask, positions, segment_ids; no packing).
A pair longer than seq_len keeps its prompt and loses the end of its completions; a pair left
with no target token in either completion is dropped and reported.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from gemmax.data.formats import example_rows, resolve_template, tokenize_example
from gemmax.data.sources import BadRows, SourceSpec, check_rows, read_rows
from gemmax.errors import GemmaxError

__all__ = [
  "PairSpec",
  "Pair",
  "load_pairs",
  "tokenize_pairs",
  "preference_batches",
  "classification_pairs",
]

log = logging.getLogger(__name__)
FIELDS = ("prompt", "chosen", "rejected")


@dataclasses.dataclass(frozen=True)
class PairSpec:
  """path: file, glob or list (JSONL / Parquet / CSV, as SourceSpec); fields: canonical name ->
  column; template: "alpaca" (default for string prompts), "gemma", "llama3", "model" or jinja."""

  path: Any
  format: str | None = None
  fields: dict = dataclasses.field(default_factory=dict)
  template: str | None = None


@dataclasses.dataclass(frozen=True)
class Pair:
  """One checked row: the chosen and rejected examples as canonical records of `kind`."""

  origin: tuple  # (file, row number)
  kind: str  # "alpaca" or "chat"
  chosen: dict
  rejected: dict


def _text(value, name):
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError:
      return None, f"invalid UTF-8: field {name!r}"
  if not isinstance(value, str):
    return None, f"non-string: field {name!r} is {type(value).__name__}"
  return value, None


def _messages(value, name, last_role):
  """A message list (or one message, or a string for the assistant) -> (list, error)."""
  if isinstance(value, (str, bytes)) and last_role == "assistant":
    text, err = _text(value, name)
    return ([{"role": "assistant", "content": text}], None) if not err else (None, err)
  if isinstance(value, dict):
    value = [value]
  if not isinstance(value, list) or not value:
    return None, f"bad messages: field {name!r} must be a non-empty message list"
  out = []
  for m in value:
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
      return None, f"bad messages: a message of {name!r} lacks 'role' or 'content'"
    role, err = _text(m["role"], "role")
    content, err2 = _text(m["content"], "content")
    if err or err2:
      return None, err or err2
    out.append({"role": role, "content": content})
  if out[-1]["role"] != last_role:
    return None, f"bad messages: {name!r} must end with a {last_role} message"
  return out, None


def pair_from_row(row: dict, col) -> tuple[tuple | None, str | None]:
  """((kind, chosen record, rejected record), None) or (None, reason)."""
  for name in FIELDS:
    if row.get(col(name)) is None:
      return None, f"missing field: {col(name)!r}"
  prompt = row[col("prompt")]
  if isinstance(prompt, (str, bytes)):
    prompt, err = _text(prompt, col("prompt"))
    answers = [_text(row[col(n)], col(n)) for n in ("chosen", "rejected")]
    err = err or next((e for _, e in answers if e), None)
    if err:
      return None, err
    (chosen, _), (rejected, _) = answers
    if not chosen.strip() or not rejected.strip():
      return None, "empty response: chosen or rejected is blank"
    records = [{"instruction": prompt, "input": "", "output": a} for a in (chosen, rejected)]
    kind, answer_texts = "alpaca", (chosen, rejected)
  else:
    turns, err = _messages(prompt, col("prompt"), "user")
    answers = [_messages(row[col(n)], col(n), "assistant") for n in ("chosen", "rejected")]
    err = err or next((e for _, e in answers if e), None)
    if err:
      return None, err
    records = [{"messages": turns + a} for a, _ in answers]
    answer_texts = tuple("".join(m["content"] for m in a) for a, _ in answers)
    if not all(t.strip() for t in answer_texts):
      return None, "empty response: chosen or rejected is blank"
    kind = "chat"
  if answer_texts[0] == answer_texts[1]:
    return None, "chosen and rejected are identical (the pair teaches nothing)"
  return (kind, *records), None


def load_pairs(spec: PairSpec, on_bad_rows: str = "fail") -> tuple[list[Pair], BadRows]:
  """Every valid pair of the source and the bad rows; "fail" raises on the first bad rows (named
  with file and row), "skip" drops and reports them. Raises if no pair is valid."""
  if on_bad_rows not in ("skip", "fail"):
    raise GemmaxError(f"on_bad_rows must be 'skip' or 'fail', got {on_bad_rows!r}")
  col = lambda name: spec.fields.get(name, name)  # noqa: E731
  source = SourceSpec(spec.path, kind="text", format=spec.format)
  pairs, bad = [], BadRows()
  for path, n, row, err in read_rows(source):
    got, err = (None, err) if err else pair_from_row(row, col)
    if err:
      bad.rows.append((path, n, err))
    else:
      pairs.append(Pair((path, n), got[0], got[1], got[2]))
  return check_rows(spec.path, pairs, bad, on_bad_rows, "pairs")


def tokenize_pairs(pairs, tokenizer, template: str | None, seq_len: int):
  """[(chosen ids, chosen mask, rejected ids, rejected mask)] cut to seq_len + 1 tokens (inputs
  and their next-token targets), and the pairs dropped because a completion kept no target."""
  kept, dropped = [], []
  for p in pairs:
    t = resolve_template(p.kind, template if p.kind == "alpaca" else (template or "gemma"))
    if p.kind == "chat" and t == "alpaca":
      raise GemmaxError("message-list pairs need a chat template, not 'alpaca'")
    c_ids, c_mask = tokenize_example(tokenizer, p.chosen, p.kind, t)
    r_ids, r_mask = tokenize_example(tokenizer, p.rejected, p.kind, t)
    c_ids, c_mask, r_ids, r_mask = (a[: seq_len + 1] for a in (c_ids, c_mask, r_ids, r_mask))
    if not c_mask[1:].any() or not r_mask[1:].any():
      dropped.append(p.origin)
      continue
    kept.append((c_ids, c_mask, r_ids, r_mask))
  if dropped:
    where = ", ".join(f"{f} row {n}" for f, n in dropped[:3])
    log.warning(
      "%d pairs keep no completion token within seq_len %d: %s", len(dropped), seq_len, where
    )
  if not kept:
    raise GemmaxError(f"every pair loses its completions at seq_len {seq_len} (e.g. {where})")
  return kept, dropped


def _batches(tokenized, batch_size, seq_len, seed, shuffle, epochs):
  n = len(tokenized)
  rng = np.random.default_rng(seed)
  epoch = 0
  while epochs is None or epoch < epochs:
    order = rng.permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if n >= batch_size else n
    for s in range(0, stop, batch_size):
      chunk = [tokenized[i] for i in order[s : s + batch_size]]
      rows = example_rows([x for c, cm, r, rm in chunk for x in ((c, cm), (r, rm))], seq_len)
      yield {k: v.reshape(len(chunk), 2, seq_len) for k, v in rows.items()}
    epoch += 1


class PairBatches:
  """The iterator of `preference_batches`, resumable: its state is the number of batches taken
  (the sequence is a function of the seed), so a checkpoint restores it exactly."""

  def __init__(self, tokenized, batch_size, seq_len, seed, shuffle, epochs):
    self._args = (tokenized, batch_size, seq_len, seed, shuffle, epochs)
    self.set_state({"batches": 0})

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self._it)
    self._taken += 1
    return batch

  def get_state(self) -> dict:
    return {"batches": self._taken}

  def set_state(self, state: dict) -> None:
    self._it, self._taken = _batches(*self._args), 0
    for _ in range(int(state["batches"])):  # numpy only: cheap next to a train step
      next(self)


def preference_batches(
  tokenized, batch_size: int, seq_len: int, *, seed: int = 0, shuffle: bool = True, epochs=None
) -> PairBatches:
  """Batches of `batch_size` whole pairs: [B, 2, seq_len] arrays, chosen then rejected. Shuffled per
  epoch with `seed`; `epochs=None` repeats forever; the last partial batch of an epoch is kept
  only when it is the only one (tiny data). get_state / set_state give its position."""
  return PairBatches(tokenized, batch_size, seq_len, seed, shuffle, epochs)


def classification_pairs(records, *, seed: int = 0, classes=None) -> list[dict]:
  """Alpaca classification rows (`output` = the class) -> preference rows {prompt, chosen,
  rejected}: the prompt is the instruction and input as one user turn (joined by a blank line, as
  gemmax.data.formats.alpaca_messages joins them, so a chat template renders the prompt that
  fine-tuning renders), chosen the row's class, rejected another class drawn uniformly with
  `seed`. `classes`: every class (default: those of the rows, sorted)."""
  classes = sorted({r["output"] for r in records}) if classes is None else list(classes)
  if len(classes) < 2:
    raise GemmaxError(f"classification pairs need at least 2 classes, got {classes}")
  rng = np.random.default_rng(seed)
  out = []
  for r in records:
    if r["output"] not in classes:
      raise GemmaxError(f"label {r['output']!r} is not one of the classes {classes}")
    wrong = [c for c in classes if c != r["output"]]
    prompt = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
    out.append(
      {"prompt": prompt, "chosen": r["output"], "rejected": wrong[rng.integers(len(wrong))]}
    )
  return out
