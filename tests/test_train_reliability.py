"""Trainer reliability in-process: NaN/Inf updates skipped and counted (or halting), checkpoints
never holding NaN/Inf, SIGTERM finishing the step and checkpointing, restores falling back past a
broken checkpoint, batches with no scored token refused, torn metrics lines dropped on resume.
All trainers share one compiled step (same model structure, optimizer and batch shapes).
"""

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from gemmax import cli
from gemmax.errors import GemmaxError, NonFiniteError, Preempted
from gemmax.models import ModelConfig, Transformer
from gemmax.train import OptimizerConfig, RunCheckpointer, Trainer, TrainerConfig, read_jsonl
from gemmax.train.metrics import MetricsWriter

STEPS = 5
_STEP = {}  # the compiled train step, shared by every Trainer of this module


class Data:
  """Deterministic float-mask batches; `poison` = {step: nan|inf} puts that value in one mask
  entry (so the loss and gradients of that step are non-finite); `on_fetch` = {step: fn}."""

  def __init__(self, poison=None, on_fetch=None, zero_mask_at=None):
    self.i, self.poison, self.on_fetch = 0, poison or {}, on_fetch or {}
    self.zero_mask_at = zero_mask_at

  def __iter__(self):
    return self

  def __next__(self):
    rng = np.random.default_rng([7, self.i])
    self.i += 1
    ids = rng.integers(3, 256, (2, 17)).astype(np.int32)
    mask = np.ones((2, 16), np.float32)
    mask[:, :4] = 0
    if self.i in self.poison:
      mask[0, 8] = self.poison[self.i]
    if self.i == self.zero_mask_at:
      mask[:] = 0
    if self.i in self.on_fetch:
      self.on_fetch[self.i]()
    return dict(
      input_ids=ids[:, :-1],
      targets=ids[:, 1:],
      loss_mask=mask,
      positions=np.tile(np.arange(16, dtype=np.int32), (2, 1)),
      segment_ids=np.ones((2, 16), np.int32),
    )

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = state["i"]


def _trainer(workdir, data, **config):
  model = Transformer(ModelConfig.preset("gemma2-tiny", num_hidden_layers=1), rngs=nnx.Rngs(0))
  opt = OptimizerConfig(learning_rate=1e-2, warmup_steps=1, steps=STEPS)
  cfg = dict(
    workdir=str(workdir),
    steps=STEPS,
    log_every=1,
    checkpoint_every=1,
    keep_checkpoints=STEPS,
    progress=False,
    async_checkpointing=False,
  )
  trainer = Trainer(model, opt, TrainerConfig(**{**cfg, **config}), train_data=data)
  if "step" in _STEP:
    trainer.train_step = _STEP["step"]
  _STEP["step"] = trainer.train_step
  return trainer


def _checkpoint(workdir, step):
  import orbax.checkpoint as ocp

  path = os.path.join(workdir, "checkpoints", str(step), "params")
  return jax.tree.leaves(ocp.StandardCheckpointer().restore(path))


def _params(trainer):
  return [np.asarray(x) for x in jax.tree.leaves(trainer.params)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted run with NaN at step 2 and Inf at step 4."""
  workdir = tmp_path_factory.mktemp("straight")
  trainer = _trainer(workdir, Data(poison={2: np.nan, 4: np.inf}))
  return trainer, trainer.run(), str(workdir)


def test_nonfinite_updates_are_skipped_and_counted(straight):
  trainer, summary, workdir = straight
  assert summary["nonfinite_steps"] == 2
  lines = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [l["nonfinite"] for l in lines] == [0, 1, 0, 1, 0]
  assert [l["nonfinite_steps"] for l in lines] == [0, 1, 1, 2, 2]
  assert not np.isfinite(lines[1]["loss"]) and np.isfinite(lines[2]["loss"])
  for step in range(1, STEPS + 1):  # every checkpoint is finite
    assert all(np.isfinite(np.asarray(x)).all() for x in _checkpoint(workdir, step))
  # The poisoned steps changed nothing: checkpoint 2 == checkpoint 1, 4 == 3; others moved.
  same = lambda a, b: all(
    np.array_equal(x, y) for x, y in zip(_checkpoint(workdir, a), _checkpoint(workdir, b))
  )
  assert same(1, 2) and same(3, 4) and not same(2, 3)


def test_halt_on_nonfinite(tmp_path):
  trainer = _trainer(tmp_path, Data(poison={2: np.nan}), halt_on_nonfinite=True)
  with pytest.raises(NonFiniteError, match="step 2: non-finite loss"):
    trainer.run()
  assert RunCheckpointer(str(tmp_path / "checkpoints"), every=1).latest_step() == 1


def test_checkpoint_refuses_nonfinite(tmp_path, straight):
  trainer = straight[0]
  bad = jax.tree.map(lambda x: x * np.nan, trainer.params)
  checkpointer = RunCheckpointer(str(tmp_path / "ckpt"), every=1, async_save=False)
  with pytest.raises(NonFiniteError, match="refusing to checkpoint step 9 parameters"):
    checkpointer.save(9, bad, trainer.opt_state, {"step": 9})
  assert checkpointer.latest_step() is None


def test_sigterm_checkpoints_the_step_and_resumes_bit_exact(tmp_path, straight):
  sigterm = lambda: os.kill(os.getpid(), signal.SIGTERM)  # arrives while batch 3 is fetched
  data = Data(poison={2: np.nan, 4: np.inf}, on_fetch={3: sigterm})
  trainer = _trainer(tmp_path, data)
  with pytest.raises(Preempted) as info:
    trainer.run()
  assert info.value.step == 3 and info.value.signal_name == "SIGTERM"
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
  stopped = _params(trainer)
  resumed = _trainer(tmp_path, Data(poison={2: np.nan, 4: np.inf}))
  assert resumed.maybe_restore() and resumed.step == 3 and resumed.train_data.i == 3
  assert all(np.array_equal(a, b) for a, b in zip(stopped, _params(resumed)))
  summary = _trainer(tmp_path, Data(poison={2: np.nan, 4: np.inf})).run()
  assert summary["nonfinite_steps"] == 2
  ref = _checkpoint(straight[2], STEPS)
  assert all(np.array_equal(a, b) for a, b in zip(ref, _checkpoint(str(tmp_path), STEPS)))
  # The CLI turns Preempted into exit status 75.
  with pytest.raises(SystemExit) as exit_info:
    cli.guard(lambda: (_ for _ in ()).throw(info.value), "finetune.py")()
  assert exit_info.value.code == cli.EXIT_PREEMPTED == 75


def test_restore_skips_a_broken_checkpoint(tmp_path, straight):
  workdir = tmp_path / "run"
  shutil.copytree(straight[2], workdir)
  newest = workdir / "checkpoints" / str(STEPS) / "params"
  for root, _, files in os.walk(newest):
    for name in files:
      open(os.path.join(root, name), "wb").close()  # truncated to nothing
  trainer = _trainer(workdir, Data())
  assert trainer.maybe_restore() and trainer.step == STEPS - 1


def test_batch_without_scored_tokens_is_refused(tmp_path):
  trainer = _trainer(tmp_path, Data(zero_mask_at=2))
  with pytest.raises(GemmaxError, match="training batch 2 has no scored token"):
    trainer.run()


def test_torn_metrics_line_is_dropped_on_resume(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + '{"step": 2, "lo')
  writer = MetricsWriter(str(tmp_path), resume_step=2, tensorboard=False)
  assert writer.history == [{"step": 1, "loss": 2.0}]
  assert read_jsonl(str(path)) == [{"step": 1, "loss": 2.0}]


def test_progress_bar_counts_a_step_once_it_has_run(tmp_path, monkeypatch):
  """The bar advances for step k only after step k+1 is dispatched and step k is done, so its
  rate and ETA follow the steps that ran (the last step counts after the loop)."""
  import gemmax.train.trainer as trainer_module

  seen = []

  class Bar:
    def __init__(self):
      self.n = 0

    def update(self, k):
      self.n += k
      seen.append((self.n, trainer.step))

    def set_postfix(self, **_):
      pass

    def close(self):
      pass

  monkeypatch.setattr(trainer_module, "_progress", lambda cfg, initial: Bar())
  trainer = _trainer(tmp_path, Data(), log_every=STEPS, checkpoint_every=0)
  trainer.run()
  assert seen == [(k, k + 1) for k in range(1, STEPS)] + [(STEPS, STEPS)]
