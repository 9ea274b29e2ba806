"""Example formats -> token ids plus a loss mask.

Kinds of record (after `sources` has renamed fields to these canonical names):
  "alpaca":  {"instruction", "input" (may be ""), "output"}  prompt = Alpaca template, target = output + eos
  "chat":    {"messages": [{"role", "content"}, ...]}        rendered with `chat.py`; targets = assistant turns
  "text":    {"text"}                                         bos + text + eos, every token a target
`classification_to_alpaca` turns (text, label) rows into Alpaca records.

Templates (`template=`): None picks the kind's default ("alpaca" for Alpaca rows, "gemma" for chat rows). Alpaca
rows take a chat template too ("gemma", "llama3", "model" = the tokenizer's own, or a jinja string): the row becomes
a one-turn chat (user: instruction, plus "\n\n" + input when there is one; assistant: output) so an instruct model
is prompted in its own format; the text its template writes after the answer's end-of-turn is left out, so the
ids end with the answer: prompt ids + answer ids + end-of-turn id, in both forms.

`tokenize_example` returns `(ids, mask)`, int32 arrays of equal length; mask[i] = 1 iff token i belongs to a
response (so predicting it is trained on), including the eos / end-of-turn token that closes the answer.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from gemmax.data.chat import TEMPLATES, chat_segments, check_template
from gemmax.errors import GemmaxError

__all__ = [
  "ALPACA_PROMPT",
  "ALPACA_PROMPT_NO_INPUT",
  "alpaca_prompt",
  "alpaca_messages",
  "classification_to_alpaca",
  "example_segments",
  "tokenize_segments",
  "tokenize_example",
  "resolve_template",
  "KINDS",
  "example_rows",
]

KINDS = ("alpaca", "chat", "text", "classification")
BATCH_KEYS = ("input_ids", "targets", "loss_mask", "positions", "segment_ids")
DEFAULT_TEMPLATE = {"alpaca": "alpaca", "classification": "alpaca", "chat": "gemma", "text": None}

# The Stanford Alpaca prompts, with the newline after "### Response:" that alpaca-lora and most later
# Alpaca-format fine-tunes use.
ALPACA_PROMPT = (
  "Below is an instruction that describes a task, paired with an input that provides further context. "
  "Write a response that appropriately completes the request.\n\n"
  "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
  "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
  "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str = "") -> str:
  """The prompt part of an Alpaca record (everything before the response)."""
  if input:
    return ALPACA_PROMPT.format(instruction=instruction, input=input)
  return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def classification_to_alpaca(
  text: str, label, instruction: str, label_words: Mapping | Sequence[str]
) -> dict:
  """(text, label) -> {"instruction", "input", "output"}; label_words maps a label (int index or key) to
  the word the model should answer, e.g. instruction="Is this review positive or negative?",
  label_words=["negative", "positive"]."""
  try:
    word = label_words[label]
  except (KeyError, IndexError, TypeError):
    raise GemmaxError(f"label {label!r} has no entry in label_words {label_words!r}") from None
  return {"instruction": instruction, "input": text, "output": word}


def alpaca_messages(record: Mapping) -> list[dict]:
  """An Alpaca record as a one-turn chat: the instruction (and input) from the user, the output from the assistant."""
  user = record["instruction"] + ("\n\n" + record["input"] if record.get("input") else "")
  return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


def resolve_template(kind: str, template: str | None) -> str | None:
  """The template an example of `kind` is rendered with: the kind's default for None (or ""), else `template`,
  checked: "alpaca" | "gemma" | "llama3" | "model" | a jinja string for Alpaca rows, all but "alpaca" for chat."""
  if kind not in DEFAULT_TEMPLATE:
    raise GemmaxError(f"unknown example kind {kind!r}; expected one of {KINDS}")
  if not template:
    return DEFAULT_TEMPLATE[kind]
  if kind == "text":
    return None  # plain text has no template
  allowed = TEMPLATES + ("model",) + (("alpaca",) if kind in ("alpaca", "classification") else ())
  check_template(template, allowed)
  return template


def example_segments(
  record: Mapping, kind: str, template: str | None = None, tokenizer=None
) -> tuple[list[tuple[str, bool]], bool, bool]:
  """(segments, add_bos, add_eos): the text pieces with their is-target flags, and which ids to add around
  them. Chat templates write their own bos (or none, as the checkpoint's template decides); the Alpaca answer
  and plain text end with eos. `tokenizer` resolves template "model" and a jinja template's special tokens."""
  if kind not in ("alpaca", "chat", "text"):
    raise GemmaxError(
      f"unknown example kind {kind!r}; expected one of alpaca, chat, text "
      "(classification rows are converted to alpaca when read)"
    )
  template = resolve_template(kind, template)
  if kind == "alpaca" and template == "alpaca":
    prompt = alpaca_prompt(record["instruction"], record.get("input") or "")
    return [(prompt, False), (record["output"], True)], True, True
  if kind == "alpaca":
    segments = chat_segments(alpaca_messages(record), template, tokenizer=tokenizer)
    while (
      segments and not segments[-1][1]
    ):  # after the answer's end-of-turn: nothing to learn or score
      segments.pop()
    return segments, False, False
  if kind == "chat":
    return chat_segments(record["messages"], template, tokenizer=tokenizer), False, False
  return [(record["text"], True)], True, True


def tokenize_segments(
  tokenizer, segments, add_bos: bool, add_eos: bool
) -> tuple[np.ndarray, np.ndarray]:
  """Tokenizes the joined text in one call (so merges across segment borders match plain `encode`) and
  marks a token as target when its character span overlaps a target segment. An added eos is a target."""
  text = "".join(piece for piece, _ in segments)
  flags = {bool(t) for piece, t in segments if piece}
  if len(flags) <= 1:  # all target or all prompt (plain text): no offsets needed
    ids = tokenizer.encode(text)
    mask = np.full(len(ids), int(flags == {True}), np.int32)
  else:
    ids, spans = tokenizer.encode_with_offsets(text)
    spans = np.asarray(spans, np.int64).reshape(-1, 2)
    starts, ends = (
      spans[:, 0],
      np.maximum(spans[:, 1], spans[:, 0] + 1),
    )  # zero-width byte pieces: 1 char
    mask, pos = np.zeros(len(ids), bool), 0
    for piece, is_target in segments:
      if is_target:
        mask |= (starts < pos + len(piece)) & (ends > pos)
      pos += len(piece)
    mask = mask.astype(np.int32)
  ids = np.asarray(ids, np.int32)
  if add_bos:
    ids, mask = np.concatenate([[tokenizer.bos_id], ids]), np.concatenate([[0], mask])
  if add_eos:
    ids, mask = np.concatenate([ids, [tokenizer.eos_id]]), np.concatenate([mask, [1]])
  return ids.astype(np.int32), mask.astype(np.int32)


def tokenize_example(
  tokenizer, record: Mapping, kind: str, template: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(ids, mask) for one canonical record; see the module docstring. For a classification prompt, give the
  record each label as its output: ids[:k] up to the first target (mask 1) is the prompt, ids[k:] the label's
  answer ids (answer + eos / end-of-turn). The Alpaca prompt and plain text start with bos where the checkpoint's
  tokenizer adds one (not for SmolLM2, whose bos `<|im_start|>` opens chat turns)."""
  segments, add_bos, add_eos = example_segments(record, kind, template, tokenizer)
  return tokenize_segments(
    tokenizer, segments, add_bos and getattr(tokenizer, "add_bos_token", True), add_eos
  )


def example_rows(seqs, seq_len: int) -> dict:
  """One unpacked example per row: [(ids [n + 1], loss mask [n + 1])] with n <= seq_len -> the
  training batch contract's [len(seqs), seq_len] int32 arrays (input_ids, targets, loss_mask,
  positions, segment_ids), the targets shifted by one and the padding zeros."""
  n = len(seqs)
  out = {k: np.zeros((n, seq_len), np.int32) for k in BATCH_KEYS}
  for i, (ids, mask) in enumerate(seqs):
    t = len(ids) - 1
    out["input_ids"][i, :t] = ids[:-1]
    out["targets"][i, :t] = ids[1:]
    out["loss_mask"][i, :t] = mask[1:]
    out["positions"][i, :t] = np.arange(t)
    out["segment_ids"][i, :t] = 1
  return out
