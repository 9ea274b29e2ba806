"""The training loop: feeds batches to the jitted step, logs, evaluates, checkpoints, resumes.

    trainer = Trainer(model, OptimizerConfig(...), TrainerConfig(workdir=..., steps=...),
                      train_data=iterator, eval_data=lambda: iterator_over_held_out_batches)
    summary = trainer.run()

`train_data` yields batch dicts (see gemmax.data); if it has get_state()/set_state() its position
goes into every checkpoint, and a resumed run continues bit-for-bit where the first one stopped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Iterable, Iterator, Optional

import jax
import numpy as np
from flax import nnx

from gemmax.train import checkpoints as ckpt
from gemmax.train.losses import CESums
from gemmax.train.metrics import MetricsWriter, plot_loss_curve
from gemmax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from gemmax.train.step import make_eval_step, make_train_step, split_model


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """Loop settings. Intervals are in optimizer steps; 0 turns a feature off."""
  workdir: str
  steps: int
  accum_steps: int = 1           # micro-batches per optimizer step (the batch is split A ways)
  log_every: int = 10
  eval_every: int = 0
  eval_batches: int = 0          # 0: the whole held-out iterator
  checkpoint_every: int = 0
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  seed: int = 0
  loss_chunk: Optional[int] = None  # tokens per loss chunk (default: from the vocabulary size)
  progress: bool = True
  save_adapter: bool = True      # HF PEFT adapter into workdir/adapter when adapters exist
  save_merged: bool = False      # merged model in HF format into workdir/merged

  def validate(self):
    for name in ("steps", "accum_steps", "log_every"):
      if getattr(self, name) <= 0:
        raise ValueError(f"trainer.{name} must be > 0, got {getattr(self, name)}")
    for name in ("eval_every", "eval_batches", "checkpoint_every"):
      if getattr(self, name) < 0:
        raise ValueError(f"trainer.{name} must be >= 0, got {getattr(self, name)}")
    return self


def _has_adapters(model) -> bool:
  try:
    from gemmax.peft import has_adapters
  except ImportError:
    return False
  return has_adapters(model)


class Trainer:
  """Owns the split model, optimizer state, step counter and RNG of one run."""

  def __init__(self, model, optimizer: OptimizerConfig, config: TrainerConfig, *,
               train_data: Iterator[dict], eval_data: Optional[Callable[[], Iterable]] = None,
               trainable=None):
    self.model, self.opt_config, self.config = model, optimizer.validate(), config.validate()
    self.train_data, self.eval_data = train_data, eval_data
    self.split = split_model(model, trainable)
    self.tx = make_optimizer(optimizer)
    self.schedule = learning_rate_schedule(optimizer)
    self.params, self.rest = self.split.params, self.split.rest
    self.opt_state = self.tx.init(self.params)
    self.rng = jax.random.key(config.seed)
    self.step = 0
    self.train_step = make_train_step(self.split.train_def, self.tx,
                                      accum_steps=config.accum_steps, loss_chunk=config.loss_chunk)
    self.eval_step = make_eval_step(self.split.eval_def, loss_chunk=config.loss_chunk)
    self.checkpointer = None
    if config.checkpoint_every:
      self.checkpointer = ckpt.RunCheckpointer(
          os.path.join(config.workdir, "checkpoints"), every=config.checkpoint_every,
          keep=config.keep_checkpoints, async_save=config.async_checkpointing)

  # --- counts ---------------------------------------------------------------------------------
  @property
  def trainable_params(self) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params)))

  @property
  def total_params(self) -> int:
    frozen = nnx.State.filter(self.rest, nnx.Param) if self.rest is not None else {}
    return self.trainable_params + int(sum(np.prod(x.shape) for x in jax.tree.leaves(frozen)))

  # --- checkpoints ----------------------------------------------------------------------------
  def _meta(self) -> dict:
    get_state = getattr(self.train_data, "get_state", None)
    return {"step": self.step, "rng": ckpt.key_to_json(self.rng),
            "data_state": get_state() if get_state else None}

  def maybe_restore(self) -> bool:
    """Restore the latest checkpoint in workdir, if any. Returns whether one was restored."""
    if self.checkpointer is None or self.checkpointer.latest_step() is None:
      return False
    self.params, self.opt_state, meta = self.checkpointer.restore(self.params, self.opt_state)
    self.step, self.rng = int(meta["step"]), ckpt.key_from_json(meta["rng"])
    if meta.get("data_state") is not None and hasattr(self.train_data, "set_state"):
      self.train_data.set_state(meta["data_state"])
    else:  # a plain iterator: skip the batches the first run consumed
      for _ in range(self.step):
        next(self.train_data)
    return True

  # --- evaluation -----------------------------------------------------------------------------
  def evaluate(self) -> dict:
    """Token-weighted loss and accuracy over the held-out batches."""
    totals = None
    for i, batch in enumerate(self.eval_data()):
      if self.config.eval_batches and i >= self.config.eval_batches:
        break
      s = self.eval_step(self.params, self.rest, batch)
      totals = s if totals is None else jax.tree.map(lambda a, b: a + b, totals, s)
    if totals is None:
      raise ValueError("the evaluation data yielded no batches")
    s = CESums(*[float(x) for x in jax.device_get(totals)])
    count = max(s.count, 1.0)
    return {"eval_loss": s.loss_sum / count, "eval_accuracy": s.correct / count,
            "eval_tokens": s.count}

  # --- the loop -------------------------------------------------------------------------------
  def run(self) -> dict:
    cfg = self.config
    os.makedirs(cfg.workdir, exist_ok=True)
    resumed = self.maybe_restore()
    writer = MetricsWriter(cfg.workdir, resume_step=self.step if resumed else None)
    bar = _progress(cfg, initial=self.step)
    start_step, t_start = self.step, time.perf_counter()
    t_last, tokens_since, rates = t_start, 0, []
    last = {}
    while self.step < cfg.steps:
      batch = next(self.train_data)
      step_rng = jax.random.fold_in(self.rng, self.step)
      self.params, self.opt_state, metrics = self.train_step(
          self.params, self.opt_state, self.rest, batch, step_rng)
      self.step += 1
      tokens_since += int(np.prod(np.shape(batch["input_ids"])))
      final = self.step == cfg.steps
      do_eval = self.eval_data is not None and cfg.eval_every and (
          self.step % cfg.eval_every == 0 or final)
      if self.step % cfg.log_every == 0 or do_eval or final:
        last = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        rate = tokens_since / max(now - t_last, 1e-9)
        if self.step - start_step > 1:  # the first interval includes compilation
          rates.append(rate)
        last.update(tokens_per_sec=rate, learning_rate=float(self.schedule(self.step - 1)))
        if do_eval:
          last.update(self.evaluate())
        writer.write(self.step, last)
        t_last, tokens_since = time.perf_counter(), 0
        if bar is not None:
          bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{rate:,.0f}")
      if self.checkpointer is not None and (self.step % cfg.checkpoint_every == 0 or final):
        self.checkpointer.save(self.step, self.params, self.opt_state, self._meta(), force=final)
      if bar is not None:
        bar.update(1)
    if bar is not None:
      bar.close()
    if self.checkpointer is not None:
      self.checkpointer.wait()
    writer.close()
    wall = time.perf_counter() - t_start
    return self._finish(writer.history, last, rates, wall)

  def _finish(self, history, last, rates, wall) -> dict:
    cfg = self.config
    nnx.update(self.model, self.params)  # the model holds the trained weights again
    summary = {
        "steps": self.step, "final_loss": last.get("loss"), "final_accuracy": last.get("accuracy"),
        "final_eval_loss": last.get("eval_loss"), "final_eval_accuracy": last.get("eval_accuracy"),
        "first_loss": history[0]["loss"] if history else None,
        "tokens_per_sec": float(np.mean(rates)) if rates else last.get("tokens_per_sec"),
        "wall_seconds": wall, "trainable_params": self.trainable_params,
        "total_params": self.total_params, "devices": [str(d) for d in jax.devices()],
    }
    if history:
      summary["loss_curve"] = plot_loss_curve(history, os.path.join(cfg.workdir, "loss_curve.png"))
    if cfg.save_adapter and _has_adapters(self.model):
      from gemmax import peft
      path = os.path.join(cfg.workdir, "adapter")
      peft.save_adapter(self.model, path)
      summary["adapter"] = path
    if cfg.save_merged:
      from gemmax import convert, peft
      path = os.path.join(cfg.workdir, "merged")
      merged = peft.merge(self.model) if _has_adapters(self.model) else self.model
      convert.save_hf(merged if merged is not None else self.model, path)
      summary["merged"] = path
    with open(os.path.join(cfg.workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
    if self.checkpointer is not None:
      self.checkpointer.close()
    return summary


def _progress(cfg: TrainerConfig, initial: int):
  if not cfg.progress:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=cfg.steps, initial=initial, desc="train", unit="step", dynamic_ncols=True)
