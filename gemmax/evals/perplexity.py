"""Perplexity of a text, scored in overlapping windows so every token sees up to `window - 1`
tokens of context."""

from __future__ import annotations

import math

import numpy as np

from gemmax.errors import GemmaxError
from gemmax.evals.scoring import continuation_logprobs


def perplexity(
  model,
  tokenizer,
  text: str,
  *,
  window: int = 512,
  stride: int | None = None,
  batch_size: int = 4,
  progress: bool = True,
) -> dict:
  """nats/token, bits/token and perplexity of `text` (BOS prepended where the tokenizer adds one,
  as transformers does; the first token is context, not scored).

  Windows of `window` tokens start every `stride` tokens; each token is scored once, in the
  first window that reaches it, after at least `window - stride` tokens of context.
  """
  context = model.config.max_position_embeddings
  if not isinstance(window, int) or not 2 <= window <= context:
    raise GemmaxError(
      f"perplexity: window {window!r} must be in [2, the model's max_position_embeddings {context}]"
    )
  ids = list(tokenizer.encode(text, add_bos=getattr(tokenizer, "add_bos_token", True)))
  if len(ids) < 2:
    raise GemmaxError("perplexity: the text is empty after tokenization")
  stride = stride or window // 2
  if not 0 < stride <= window - 1:
    raise GemmaxError(f"perplexity: stride {stride} must be in [1, window - 1 = {window - 1}]")
  prefixes, conts, done = [], [], 1  # tokens [0, done) are scored (BOS counts as done)
  begin = 0
  while done < len(ids):
    end = min(begin + window, len(ids))
    prefixes.append(ids[begin:done])
    conts.append(ids[done:end])
    done = end
    begin = max(end - (window - stride), 0) if end < len(ids) else end
  lps = continuation_logprobs(
    model,
    prefixes,
    conts,
    batch_size=batch_size,
    max_len=window,
    pad_id=max(getattr(tokenizer, "pad_id", 0) or 0, 0),
    progress=progress,
    desc="perplexity",
  )
  total = -float(np.sum([x.sum() for x in lps]))
  n = sum(len(c) for c in conts)
  if n == 0 or sum(len(x) for x in lps) != n:  # never a perplexity of nothing (it would read 1.0)
    raise GemmaxError(f"perplexity: {sum(len(x) for x in lps)} of {n} tokens were scored")
  nats = total / n
  return dict(
    tokens=n,
    nll_nats=total,
    nats_per_token=nats,
    bits_per_token=nats / math.log(2),
    perplexity=math.exp(nats),
    window=window,
    stride=stride,
  )


def perplexity_of_file(model, tokenizer, path: str, **kw) -> dict:
  with open(path, encoding="utf-8") as f:
    text = f.read()
  return {"file": path, **perplexity(model, tokenizer, text, **kw)}
