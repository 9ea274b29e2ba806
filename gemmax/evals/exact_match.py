"""Generation-based exact match: greedy answers compared with references after normalizing."""

from __future__ import annotations

from typing import Sequence

from tqdm.auto import tqdm

from gemmax.errors import GemmaxError
from gemmax.sampling import Sampler


def normalize(text: str, lowercase: bool = True) -> str:
  text = " ".join(text.strip().split())
  return text.lower() if lowercase else text


def exact_match(
  model,
  tokenizer,
  prompts: Sequence[str],
  references: Sequence[str],
  *,
  max_new_tokens: int = 32,
  stop=("\n",),
  batch_size: int = 8,
  lowercase: bool = True,
  progress: bool = True,
) -> dict:
  """Fraction of prompts whose greedy continuation (cut at `stop`) equals the reference."""
  if len(prompts) != len(references):
    raise GemmaxError(f"{len(prompts)} prompts but {len(references)} references")
  sampler = Sampler(model, tokenizer)
  preds = []
  for i in tqdm(
    range(0, len(prompts), batch_size), desc="exact match", disable=not progress, leave=False
  ):
    preds += sampler.generate(
      list(prompts[i : i + batch_size]), max_new_tokens, stop=list(stop)
    ).text
  hits = [normalize(p, lowercase) == normalize(r, lowercase) for p, r in zip(preds, references)]
  return dict(exact_match=sum(hits) / max(len(hits), 1), num_examples=len(hits), predictions=preds)
