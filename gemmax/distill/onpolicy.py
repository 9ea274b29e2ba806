"""On-policy distillation (GKD): some batches' responses are sampled from the current student.

    data = OnPolicyBatches(make_pipeline(..., DataConfig(packing=False)), fraction=0.5,
                           max_new_tokens=64, tokenizer=tok)
    trainer = Trainer(TeacherStudent(student, teacher), ..., train_data=data, loss_fn=...)
    data.bind(trainer)   # samples come from the trainer's current student parameters

With probability `fraction` (lambda) a batch keeps only each row's prompt (the tokens before its
first scored target, at least `min_prompt` tokens) and gets a continuation sampled by
gemmax.sampling.Sampler (prefill + KV-cache decode) from the student as it is at that step; the
generated tokens become the scored targets and the teacher scores them in the online loss. The
other batches pass through unchanged. Rows must hold one example each (packing=False).
The coin flips and sampling keys derive from (seed, batch number): resuming replays them.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from gemmax.errors import GemmaxError


def _example(batch, r):
  """Row r -> (tokens [n + 1], loss_mask [n]) of its single example, or None if empty."""
  seg = np.asarray(batch["segment_ids"][r])
  n = int((seg > 0).sum())
  if n == 0:
    return None
  if seg.max() > 1:
    raise GemmaxError("on-policy batches need one example per row (data.packing = False)")
  ids = np.asarray(batch["input_ids"][r][:n])
  return np.append(ids, batch["targets"][r][n - 1]).astype(np.int32), np.asarray(
    batch["loss_mask"][r][:n]
  )


def onpolicy_batch(
  batch: dict,
  student,
  *,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_k=None,
  top_p=None,
  min_prompt: int = 1,
  seed: int = 0,
  tokenizer=None,
) -> dict:
  """The batch with every row's response replaced by a sample from `student` (see module doc).

  Returns a new batch dict of the same shapes; loss_mask is 1 exactly on the sampled tokens.
  """
  from gemmax.sampling import Sampler

  b, t = np.shape(batch["input_ids"])
  rows, prompts = [], []
  for r in range(b):
    ex = _example(batch, r)
    if ex is None:
      continue
    tokens, mask = ex
    first = int(np.argmax(mask)) if mask.any() else len(mask)
    p = min(max(first + 1, min_prompt), len(mask), t)  # prompt = tokens[:p]
    rows.append(r)
    prompts.append(list(tokens[:p]))
  out = {k: np.array(v) for k, v in batch.items()}
  if not rows:
    return out
  steps = max(1, min(max_new_tokens, t + 1 - min(len(p) for p in prompts)))
  result = Sampler(student, tokenizer).generate(
    prompts, max_new_tokens=steps, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
  )
  for r, prompt, gen in zip(rows, prompts, result.tokens):
    seq = np.asarray(prompt + list(gen), np.int32)[: t + 1]
    n = len(seq) - 1
    for key in ("input_ids", "targets", "loss_mask", "positions", "segment_ids"):
      out[key][r] = 0
    out["input_ids"][r, :n], out["targets"][r, :n] = seq[:-1], seq[1:]
    out["loss_mask"][r, len(prompt) - 1 : n] = 1  # targets from the first generated token on
    out["positions"][r, :n], out["segment_ids"][r, :n] = np.arange(n), 1
  return out


class OnPolicyBatches:
  """Iterator wrapper mixing dataset batches with student-sampled ones (module docstring)."""

  def __init__(
    self,
    data,
    *,
    fraction: float,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k=None,
    top_p=None,
    min_prompt: int = 1,
    seed: int = 0,
    tokenizer=None,
  ):
    if not 0.0 <= fraction <= 1.0:
      raise GemmaxError(f"on-policy fraction must be in [0, 1], got {fraction}")
    if max_new_tokens < 1:
      raise GemmaxError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    self.data, self.fraction, self.seed, self.tokenizer = data, fraction, seed, tokenizer
    self.sample_kw = dict(
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      min_prompt=min_prompt,
    )
    self.count = 0  # batches drawn so far
    self.sampled = 0  # of which on-policy
    self._student = None

  def bind(self, student):
    """`student`: a Transformer, a callable returning the current one, or a gemmax Trainer."""
    if hasattr(student, "split") and hasattr(student, "params"):
      trainer = student

      def current():
        model = nnx.merge(trainer.split.eval_def, trainer.params, trainer.rest)
        return getattr(model, "student", model)

      self._student = current
    else:
      self._student = (
        student if callable(student) and not isinstance(student, nnx.Module) else (lambda: student)
      )
    return self

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self.data)
    rng = np.random.default_rng([self.seed, self.count])
    self.count += 1
    if self.fraction > 0 and rng.random() < self.fraction:
      if self._student is None:
        raise RuntimeError("OnPolicyBatches: call bind(trainer or student) before iterating")
      self.sampled += 1
      batch = onpolicy_batch(
        batch,
        self._student(),
        seed=int(rng.integers(2**31)),
        tokenizer=self.tokenizer,
        **self.sample_kw,
      )
    return batch

  def get_state(self) -> dict:
    inner = self.data.get_state() if hasattr(self.data, "get_state") else None
    return {"data": inner, "count": self.count, "sampled": self.sampled}

  def set_state(self, state: dict) -> None:
    if state.get("data") is not None:
      self.data.set_state(state["data"])
    self.count, self.sampled = int(state["count"]), int(state.get("sampled", 0))
