"""Zero/few-shot classification by label log-likelihood: score every class label after the
prompt and predict the most likely one."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from gemmax.evals.metrics import classification_metrics
from gemmax.evals.scoring import continuation_logprobs


def build_prompt(text: str, template: str, few_shot=(), label_template: str = " {label}",
                 separator: str = "\n\n") -> str:
  """The few-shot examples (prompt + label), then this example's prompt."""
  shots = "".join(template.format(text=t) + label_template.format(label=l) + separator
                  for t, l in few_shot)
  return shots + template.format(text=text)


def label_scores(model, tokenizer, texts: Sequence[str], classes: Sequence[str], *,
                 template: str = "{text}", label_template: str = " {label}", few_shot=(),
                 reduction: str = "mean", batch_size: int = 8, progress: bool = True) -> np.ndarray:
  """[N, C] scores: sum or mean of the label tokens' logprobs given each prompt."""
  if reduction not in ("sum", "mean"):
    raise ValueError(f"reduction {reduction!r} is not 'sum' or 'mean'")
  if len(classes) < 2:
    raise ValueError(f"classification needs at least 2 classes, got {list(classes)}")
  labels = [tokenizer.encode(label_template.format(label=c), add_bos=False) for c in classes]
  for c, ids in zip(classes, labels):
    if not ids:
      raise ValueError(f"class {c!r} encodes to no tokens")
  prefixes, conts = [], []
  for text in texts:
    p = tokenizer.encode(build_prompt(text, template, few_shot, label_template), add_bos=True)
    prefixes += [p] * len(classes)
    conts += labels
  lps = continuation_logprobs(model, prefixes, conts, batch_size=batch_size,
                              pad_id=max(getattr(tokenizer, "pad_id", 0) or 0, 0),
                              progress=progress, desc="classifying")
  agg = np.sum if reduction == "sum" else np.mean
  return np.asarray([agg(x) for x in lps], np.float64).reshape(len(texts), len(classes))


def evaluate_classification(model, tokenizer, texts: Sequence[str], gold: Sequence[str],
                            classes: Optional[Sequence[str]] = None, **kw) -> dict:
  """Accuracy, macro-F1, per-class report and confusion matrix; `kw` go to label_scores.

  gold: the true class name per text. Returns metrics plus `predictions` (class names).
  """
  classes = list(classes or sorted(set(gold)))
  index = {c: i for i, c in enumerate(classes)}
  unknown = sorted(set(gold) - set(index))
  if unknown:
    raise ValueError(f"gold labels {unknown} are not among the classes {classes}")
  scores = label_scores(model, tokenizer, texts, classes, **kw)
  pred = scores.argmax(1)
  metrics = classification_metrics([index[g] for g in gold], pred.tolist(), classes)
  metrics["predictions"] = [classes[i] for i in pred]
  metrics["reduction"] = kw.get("reduction", "mean")
  return metrics
