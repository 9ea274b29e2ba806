"""Plain text -> "text" records: consecutive lines joined into chunks, every n-th held out.

The split experiments/pretrain.py uses for the bundled model (chunk_chars=800, every 100th
chunk held out), so other experiments can train and evaluate on the same held-out text.
"""

from __future__ import annotations

from typing import Iterable, Iterator


def chunk_lines(lines: Iterable[str], chunk_chars: int) -> Iterator[str]:
  """Consecutive lines joined with newlines into pieces of <= chunk_chars characters; longer
  lines are split at spaces."""
  buf = ""
  for line in lines:
    line = line.rstrip("\n")
    while len(line) > chunk_chars:  # a long paragraph: cut at the last space before the limit
      cut = line.rfind(" ", 0, chunk_chars)
      cut = cut if cut > 0 else chunk_chars
      if buf:
        yield buf
        buf = ""
      yield line[:cut]
      line = line[cut:].lstrip(" ")
    if buf and len(buf) + 1 + len(line) > chunk_chars:
      yield buf
      buf = ""
    buf = f"{buf}\n{line}" if buf else line
  if buf:
    yield buf


def holdout_split(chunks: list[str], every: int) -> tuple[list[str], list[str]]:
  """(train, held_out): chunk i is held out iff i % every == every - 1."""
  held = [ch for i, ch in enumerate(chunks) if i % every == every - 1]
  train = [ch for i, ch in enumerate(chunks) if i % every != every - 1]
  return train, held


def corpus_split(
  path: str, chunk_chars: int = 800, every: int = 100
) -> tuple[list[str], list[str]]:
  """A text file -> (train chunks, held-out chunks), blank chunks dropped."""
  with open(path, encoding="utf-8") as f:
    chunks = [ch for ch in chunk_lines(f, chunk_chars) if ch.strip()]
  return holdout_split(chunks, every)
