"""Run logging: metrics.jsonl (one JSON object per logged step), TensorBoard, loss-curve PNG."""

from __future__ import annotations

import json
import math
import os
import sys

from gemmax.train.workdir import write_atomic


class MetricsWriter:
  """Appends `{"step": ..., **scalars}` lines to workdir/metrics.jsonl and TensorBoard events.

  On resume the file is truncated to the lines with step <= the restored step, so a resumed run
  has one line per logged step, as if it had never stopped.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    kept = []
    if resume_step is not None and os.path.exists(self.path):
      kept = [l for l in read_jsonl(self.path, skip_torn=True) if l.get("step", 0) <= resume_step]
    # Rewritten whole (temp file + rename): a crash here cannot lose the lines already logged.
    write_atomic(self.path, "".join(json.dumps(line) + "\n" for line in kept))
    self.history = kept
    self.tb = None
    if tensorboard:
      SummaryWriter = _tensorboard_writer_class()
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict):
    line = {"step": int(step), **{k: _jsonable(v) for k, v in scalars.items()}}
    self.history.append(line)
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(line) + "\n")
    if self.tb is not None:
      for k, v in line.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self.tb.add_scalar(k, v, step)

  def close(self):
    if self.tb is not None:
      self.tb.flush()
      self.tb.close()


def _tensorboard_writer_class():
  # tensorboardX imports torch, when installed, only to accept torch tensors: seconds of start-up
  # per run for nothing here (gemmax logs floats). Hide torch while tensorboardX loads.
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter


def _jsonable(v):
  v = v.item() if hasattr(v, "item") else v
  return float(v) if isinstance(v, float) else v


def read_jsonl(path: str, skip_torn: bool = False) -> list[dict]:
  """The JSON objects of a .jsonl file. skip_torn: drop lines that do not parse (the last line
  of a run killed while writing it)."""
  out = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        if not skip_torn:
          raise
  return out


def plot_loss_curve(history: list[dict], path: str, title: str = "") -> str:
  """Train loss (and eval_loss where logged) against step, written as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  train = [(h["step"], h["loss"]) for h in history if "loss" in h]
  evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
  if train:
    ax.plot(*zip(*train), label="train loss")
  if evals:
    ax.plot(*zip(*evals), "o-", label="eval loss")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats / token)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path
