"""The training loop: feeds batches to the jitted step, logs, evaluates, checkpoints, resumes.

    trainer = Trainer(model, OptimizerConfig(...), TrainerConfig(workdir=..., steps=...),
                      train_data=iterator, eval_data=lambda: iterator_over_held_out_batches)
    summary = trainer.run()

`train_data` yields batch dicts (see gemmax.data); if it has get_state()/set_state() its position
goes into every checkpoint, and a resumed run continues bit-for-bit where the first one stopped;
if it has metrics() (a dict of floats), they join every logged metrics line.

Reliability: a NaN/Inf loss or gradient skips that update and is counted (`nonfinite_steps` in
metrics and summary), or raises NonFiniteError with `halt_on_nonfinite`; a batch with no scored
token raises; SIGTERM/SIGINT finish the step, checkpoint, and raise errors.Preempted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Callable, Iterable, Iterator, Optional

import jax
import numpy as np
from flax import nnx

from gemmax.errors import GemmaxError, NonFiniteError, Preempted
from gemmax.schema import above, at_least, check_fields
from gemmax.train import checkpoints as ckpt
from gemmax.train.metrics import MetricsWriter, plot_loss_curve
from gemmax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from gemmax.train.preemption import StopSignals
from gemmax.train.step import make_eval_step, make_train_step, per_token_metrics, split_model
from gemmax.train.workdir import write_atomic


# The ranges of the loop fields (experiments/schemas.py checks a recipe's loop keys by them).
RULES = {
  **{k: above(0) for k in ("steps", "accum_steps", "log_every", "keep_checkpoints")},
  **{k: at_least(0) for k in ("eval_every", "eval_batches", "checkpoint_every")},
}


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """Loop settings. Intervals are in optimizer steps; 0 turns a feature off."""

  workdir: str
  steps: int
  accum_steps: int = 1  # micro-batches per optimizer step (the batch is split A ways)
  log_every: int = 10
  eval_every: int = 0
  eval_batches: int = 0  # 0: the whole held-out iterator
  checkpoint_every: int = 0
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  seed: int = 0
  loss_chunk: Optional[int] = None  # tokens per loss chunk (default: from the vocabulary size)
  progress: bool = True
  save_adapter: bool = True  # HF PEFT adapter into workdir/adapter when adapters exist
  save_merged: bool = False  # merged model in HF format into workdir/merged
  halt_on_nonfinite: bool = False  # NaN/Inf loss or grads: raise (checks every step) vs skip

  def validate(self):
    return check_fields(self, RULES, "trainer.")


def _has_adapters(model) -> bool:
  try:
    from gemmax.peft import has_adapters
  except ImportError:
    return False
  return has_adapters(model)


class Trainer:
  """Owns the split model, optimizer state, step counter and RNG of one run."""

  def __init__(
    self,
    model,
    optimizer: OptimizerConfig,
    config: TrainerConfig,
    *,
    train_data: Iterator[dict],
    eval_data: Optional[Callable[[], Iterable]] = None,
    trainable=None,
    mesh=None,
    loss_fn=None,
  ):
    """mesh: a gemmax.sharding mesh the model is already sharded over (load_hf(mesh=...) or
    gemmax.models.create_sharded, then peft.apply + shard_model); batches are split over its data and fsdp
    axes, each process feeding its own rows. loss_fn: see make_train_step (default: CE)."""
    self.model, self.opt_config, self.config = model, optimizer.validate(), config.validate()
    self.mesh = mesh
    self.train_data, self.eval_data = train_data, eval_data
    self.split = split_model(model, trainable)
    self.tx = make_optimizer(optimizer)
    self.schedule = learning_rate_schedule(optimizer)
    self.params, self.rest = self.split.params, self.split.rest
    self.opt_state = self.tx.init(self.params)
    self.rng = jax.random.key(config.seed)
    self.step = 0
    self.nonfinite = 0.0  # skipped updates so far; a device scalar while running (no sync)
    self.train_step = make_train_step(
      self.split.train_def,
      self.tx,
      accum_steps=config.accum_steps,
      loss_chunk=config.loss_chunk,
      loss_fn=loss_fn,
    )
    self.eval_step = make_eval_step(
      self.split.eval_def, loss_chunk=config.loss_chunk, loss_fn=loss_fn
    )
    self.checkpointer = None
    if config.checkpoint_every:
      self._open_checkpointer()

  # --- counts ---------------------------------------------------------------------------------
  @property
  def trainable_params(self) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params)))

  @property
  def total_params(self) -> int:
    frozen = nnx.State.filter(self.rest, nnx.Param) if self.rest is not None else {}
    return self.trainable_params + int(sum(np.prod(x.shape) for x in jax.tree.leaves(frozen)))

  # --- checkpoints ----------------------------------------------------------------------------
  def _open_checkpointer(self) -> ckpt.RunCheckpointer:
    if self.checkpointer is None:
      cfg = self.config
      self.checkpointer = ckpt.RunCheckpointer(
        os.path.join(cfg.workdir, "checkpoints"),
        every=cfg.checkpoint_every,
        keep=cfg.keep_checkpoints,
        async_save=cfg.async_checkpointing,
      )
    return self.checkpointer

  def _meta(self) -> dict:
    get_state = getattr(self.train_data, "get_state", None)
    return {
      "step": self.step,
      "rng": ckpt.key_to_json(self.rng),
      "data_state": get_state() if get_state else None,
      "nonfinite_steps": int(jax.device_get(self.nonfinite)),
    }

  def maybe_restore(self) -> bool:
    """Restore the latest complete checkpoint in workdir, if any (also one written on preemption
    with periodic checkpoints off). Returns whether one was restored."""
    if self.checkpointer is None and os.path.isdir(
      os.path.join(self.config.workdir, "checkpoints")
    ):
      self._open_checkpointer()
    if self.checkpointer is None or self.checkpointer.latest_step() is None:
      return False
    self.params, self.opt_state, meta = self.checkpointer.restore(self.params, self.opt_state)
    self.step, self.rng = int(meta["step"]), ckpt.key_from_json(meta["rng"])
    self.nonfinite = float(meta.get("nonfinite_steps", 0))
    if meta.get("data_state") is not None and hasattr(self.train_data, "set_state"):
      self.train_data.set_state(meta["data_state"])
    else:  # a plain iterator: skip the batches the first run consumed
      for _ in range(self.step):
        next(self.train_data)
    return True

  def _place(self, batch: dict) -> dict:
    """This process's rows -> global arrays sharded over the mesh's batch axes."""
    if self.mesh is None:
      return batch
    from gemmax import sharding

    def put(x):
      x = np.asarray(x)
      shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
      axes = ("batch",) + (None,) * (x.ndim - 1)
      spec = sharding.sharding_for_axes(axes, shape, self.mesh, name="batch")
      return jax.make_array_from_process_local_data(spec, x, shape)

    return {k: put(v) for k, v in batch.items()}

  def _mesh_context(self):
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  # --- evaluation -----------------------------------------------------------------------------
  def evaluate(self) -> dict:
    """Token-weighted loss and accuracy over the held-out batches."""
    totals = None
    for i, batch in enumerate(self.eval_data()):
      if self.config.eval_batches and i >= self.config.eval_batches:
        break
      with self._mesh_context():
        s = self.eval_step(self.params, self.rest, self._place(batch))
      totals = s if totals is None else jax.tree.map(lambda a, b: a + b, totals, s)
    if totals is None:
      raise GemmaxError("the evaluation data yielded no batches")
    s = type(totals)(*[float(x) for x in jax.device_get(totals)])
    return {f"eval_{k}": v for k, v in per_token_metrics(s).items()}

  # --- the loop -------------------------------------------------------------------------------
  def run(self) -> dict:
    """Trains up to `steps`, resuming from the workdir's last complete checkpoint. Returns the
    summary (a finished run's saved one, if it is already complete)."""
    cfg = self.config
    os.makedirs(cfg.workdir, exist_ok=True)
    resumed = self.maybe_restore()
    if resumed:
      print(f"resumed from step {self.step} ({self.checkpointer.directory})", flush=True)
      done = os.path.join(cfg.workdir, "summary.json")
      if self.step >= cfg.steps and os.path.isfile(done):  # finished before: nothing to redo
        nnx.update(self.model, self.params)
        with open(done, encoding="utf-8") as f:
          return json.load(f)
    writer = MetricsWriter(cfg.workdir, resume_step=self.step if resumed else None)
    bar = _progress(cfg, initial=self.step)
    # The bar counts a step once it has run, not when it is dispatched: a step is asynchronous,
    # and counted at dispatch the bar raced ahead between log steps and waited at each, so its
    # rate and ETA swung several-fold. Waiting for the step before the one just dispatched keeps
    # the next one queued behind it.
    in_flight = None

    def count(loss):
      jax.block_until_ready(loss)
      bar.update(1)

    start_step, t_start = self.step, time.perf_counter()
    t_last, tokens_since, rates = t_start, 0, []
    last = dict(writer.history[-1]) if writer.history else {}
    try:
      with StopSignals() as stop:
        while self.step < cfg.steps:
          batch = next(self.train_data)
          self._check_batch(batch)
          step_rng = jax.random.fold_in(self.rng, self.step)
          with self._mesh_context():
            self.params, self.opt_state, metrics = self.train_step(
              self.params, self.opt_state, self.rest, self._place(batch), step_rng
            )
          self.step += 1
          self.nonfinite = self.nonfinite + metrics["nonfinite"]
          if cfg.halt_on_nonfinite and float(metrics["nonfinite"]):  # a sync per step, by choice
            raise NonFiniteError(
              f"step {self.step}: non-finite loss or gradients (loss "
              f"{float(metrics['loss'])}, grad_norm {float(metrics['grad_norm'])}); halted "
              "(halt_on_nonfinite); the update was not applied"
            )
          tokens_since += int(np.prod(np.shape(batch["input_ids"])))
          final = self.step == cfg.steps
          do_eval = (
            self.eval_data is not None
            and cfg.eval_every
            and (self.step % cfg.eval_every == 0 or final)
          )
          if self.step % cfg.log_every == 0 or do_eval or final:
            last = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            rate = tokens_since / max(now - t_last, 1e-9)
            if self.step - start_step > 1:  # the first interval includes compilation
              rates.append(rate)
            last.update(
              tokens_per_sec=rate,
              learning_rate=float(self.schedule(self.step - 1)),
              nonfinite_steps=int(jax.device_get(self.nonfinite)),
            )
            data_metrics = getattr(self.train_data, "metrics", None)
            if callable(data_metrics):  # e.g. GRPO rollouts' rewards and sampling speed
              last.update(data_metrics())
            if do_eval:
              last.update(self.evaluate())
            writer.write(self.step, last)
            t_last, tokens_since = time.perf_counter(), 0
            if bar is not None:
              bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{rate:,.0f}")
          if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or final):
            self.checkpointer.save(
              self.step, self.params, self.opt_state, self._meta(), force=final
            )
          if bar is not None:
            if in_flight is not None:
              count(in_flight)
            in_flight = metrics["loss"]
          if stop.requested and not final:
            self._preempt(stop.requested)
        if bar is not None and in_flight is not None:
          count(in_flight)
    finally:
      if bar is not None:
        bar.close()
      if self.checkpointer is not None:
        self.checkpointer.wait()  # a started write completes even when we stop on an error
      writer.close()
    wall = time.perf_counter() - t_start
    return self._finish(writer.history, last, rates, wall)

  def _check_batch(self, batch: dict) -> None:
    mask = batch.get("loss_mask")
    # Only host (numpy) batches of a single process: elsewhere a per-process raise would hang.
    if isinstance(mask, np.ndarray) and jax.process_count() == 1 and not mask.any():
      raise GemmaxError(
        f"training batch {self.step + 1} has no scored token (its loss_mask is all "
        "0): every response was cut off or masked; check data.seq_len and the "
        "data format"
      )

  def _preempt(self, signal_name: str):
    """Checkpoint the finished step (unless just saved) and raise Preempted."""
    checkpointer = self._open_checkpointer()
    checkpointer.wait()
    if checkpointer.latest_step() != self.step:
      checkpointer.save(self.step, self.params, self.opt_state, self._meta(), force=True)
      checkpointer.wait()
    raise Preempted(self.step, checkpointer.directory, signal_name)

  def _finish(self, history, last, rates, wall) -> dict:
    cfg = self.config
    nnx.update(self.model, self.params)  # the model holds the trained weights again
    summary = {
      "steps": self.step,
      "final_loss": last.get("loss"),
      "final_accuracy": last.get("accuracy"),
      "final_eval_loss": last.get("eval_loss"),
      "final_eval_accuracy": last.get("eval_accuracy"),
      "first_loss": history[0]["loss"] if history else None,
      "tokens_per_sec": float(np.mean(rates)) if rates else last.get("tokens_per_sec"),
      "wall_seconds": wall,
      "trainable_params": self.trainable_params,
      "total_params": self.total_params,
      "devices": [str(d) for d in jax.devices()],
      "nonfinite_steps": int(jax.device_get(self.nonfinite)),
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
    write_atomic(os.path.join(cfg.workdir, "summary.json"), json.dumps(summary, indent=2))
    if self.checkpointer is not None:
      self.checkpointer.close()
    return summary


def _progress(cfg: TrainerConfig, initial: int):
  if not cfg.progress:
    return None
  from tqdm.auto import tqdm

  return tqdm(total=cfg.steps, initial=initial, desc="train", unit="step", dynamic_ncols=True)
