"""Classification metrics computed by hand: accuracy, confusion matrix, per-class P/R/F1."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
  """[C, C] counts; row = true class, column = predicted class."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  for t, p in zip(y_true, y_pred):
    cm[t, p] += 1
  return cm


def per_class(cm: np.ndarray) -> dict:
  """precision, recall, f1, support [C] from a confusion matrix (0 where undefined)."""
  tp = np.diag(cm).astype(np.float64)
  pred, true = cm.sum(0), cm.sum(1)
  precision = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
  recall = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  return dict(precision=precision, recall=recall, f1=f1, support=true)


def classification_metrics(y_true, y_pred, class_names: Sequence[str]) -> dict:
  """accuracy, macro_f1 (unweighted mean over all classes), per-class report, confusion matrix."""
  c = len(class_names)
  cm = confusion_matrix(y_true, y_pred, c)
  pc = per_class(cm)
  n = max(len(y_true), 1)
  return dict(
    accuracy=float(np.trace(cm) / n),
    macro_f1=float(pc["f1"].mean()) if c else 0.0,
    num_examples=len(y_true),
    classes=list(class_names),
    confusion_matrix=cm.tolist(),
    per_class={
      name: dict(
        precision=float(pc["precision"][i]),
        recall=float(pc["recall"][i]),
        f1=float(pc["f1"][i]),
        support=int(pc["support"][i]),
      )
      for i, name in enumerate(class_names)
    },
  )


def format_report(metrics: dict) -> str:
  """A printable table: per-class precision/recall/F1/support, then the confusion matrix."""
  names = metrics["classes"]
  w = max([len(n) for n in names] + [9])
  lines = [f"{'class':<{w}}  precision  recall     f1  support"]
  for n in names:
    r = metrics["per_class"][n]
    lines.append(
      f"{n:<{w}}  {r['precision']:9.3f}  {r['recall']:6.3f}  {r['f1']:5.3f}  {r['support']:7d}"
    )
  lines.append(
    f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   "
    f"n={metrics['num_examples']}"
  )
  lines.append("confusion matrix (rows = true, columns = predicted):")
  cw = max(6, max(len(str(x)) for row in metrics["confusion_matrix"] for x in row) + 1)
  lines.append(" " * w + "".join(f"{i:>{cw}d}" for i in range(len(names))))
  for i, (n, row) in enumerate(zip(names, metrics["confusion_matrix"])):
    lines.append(f"{n:<{w}}" + "".join(f"{x:>{cw}d}" for x in row))
  return "\n".join(lines)


def save_confusion_png(metrics: dict, path: str) -> str:
  """Writes the confusion matrix as a PNG heat map with counts; returns the path."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cm = np.asarray(metrics["confusion_matrix"])
  names = metrics["classes"]
  size = 1.5 + 0.6 * len(names)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  im = ax.imshow(cm, cmap="Blues")
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  for i in range(cm.shape[0]):
    for j in range(cm.shape[1]):
      ax.text(
        j,
        i,
        str(cm[i, j]),
        ha="center",
        va="center",
        color="white" if cm[i, j] > cm.max() / 2 else "black",
      )
  fig.colorbar(im, ax=ax)
  ax.set_title(f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
