"""Zero/few-shot classification by label log-likelihood: score every class label after the
prompt and predict the most likely one."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from gemmax.errors import GemmaxError
from gemmax.evals.metrics import classification_metrics
from gemmax.evals.scoring import continuation_logprobs


def build_prompt(
  text: str, template: str, few_shot=(), label_template: str = " {label}", separator: str = "\n\n"
) -> str:
  """The few-shot examples (prompt + label), then this example's prompt."""
  shots = "".join(
    template.format(text=t) + label_template.format(label=l) + separator for t, l in few_shot
  )
  return shots + template.format(text=text)


def check_template(template: str, field: str, key: str) -> None:
  """`template` must name `field` and nothing else: "Text: {text}" for prompts, " {label}" for
  labels (a typo such as "{lable}" fails here, naming the key, before any scoring)."""
  import string

  try:
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
  except ValueError as e:
    raise GemmaxError(f"{key} {template!r} is not a valid format string ({e})") from None
  unknown = sorted(f for f in fields if f != field)
  if unknown or field not in fields:
    raise GemmaxError(
      f"{key} {template!r} must use {{{field}}} and no other field"
      + (f" (unknown: {', '.join(unknown)})" if unknown else "")
    )


def label_scores(
  model,
  tokenizer,
  texts: Sequence[str],
  classes: Sequence[str],
  *,
  template: str = "{text}",
  label_template: str = " {label}",
  few_shot=(),
  reduction: str = "mean",
  batch_size: int = 8,
  progress: bool = True,
) -> np.ndarray:
  """[N, C] scores: sum or mean of the label tokens' logprobs given each prompt."""
  if reduction not in ("sum", "mean"):
    raise GemmaxError(f"reduction {reduction!r} is not 'sum' or 'mean'")
  if len(classes) < 2:
    raise GemmaxError(f"classification needs at least 2 classes, got {list(classes)}")
  check_template(template, "text", "template")
  check_template(label_template, "label", "label_template")
  labels = [tokenizer.encode(label_template.format(label=c), add_bos=False) for c in classes]
  for c, ids in zip(classes, labels):
    if not ids:
      raise GemmaxError(f"class {c!r} encodes to no tokens")
  prefixes, conts = [], []
  for text in texts:
    p = tokenizer.encode(build_prompt(text, template, few_shot, label_template), add_bos=True)
    prefixes += [p] * len(classes)
    conts += labels
  lps = continuation_logprobs(
    model,
    prefixes,
    conts,
    batch_size=batch_size,
    pad_id=max(getattr(tokenizer, "pad_id", 0) or 0, 0),
    progress=progress,
    desc="classifying",
  )
  agg = np.sum if reduction == "sum" else np.mean
  return np.asarray([agg(x) for x in lps], np.float64).reshape(len(texts), len(classes))


def evaluate_classification(
  model,
  tokenizer,
  texts: Sequence[str],
  gold: Sequence[str],
  classes: Optional[Sequence[str]] = None,
  **kw,
) -> dict:
  """Accuracy, macro-F1, per-class report and confusion matrix; `kw` go to label_scores.

  gold: the true class name per text. Returns metrics plus `predictions` (class names).
  """
  classes = list(classes or sorted(set(gold)))
  index = {c: i for i, c in enumerate(classes)}
  unknown = sorted(set(gold) - set(index))
  if unknown:
    raise GemmaxError(f"gold labels {unknown} are not among the classes {classes}")
  scores = label_scores(model, tokenizer, texts, classes, **kw)
  pred = scores.argmax(1)
  metrics = classification_metrics([index[g] for g in gold], pred.tolist(), classes)
  metrics["predictions"] = [classes[i] for i in pred]
  metrics["reduction"] = kw.get("reduction", "mean")
  return metrics
