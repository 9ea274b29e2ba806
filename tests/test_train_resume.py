"""Trainer: 6 steps straight == 3 steps + resume + 3 steps, bit for bit (CPU); run outputs exist."""

import json
import os

import jax
import numpy as np
from flax import nnx

from gemmax.models import ModelConfig, Transformer
from gemmax.train import OptimizerConfig, Trainer, TrainerConfig, read_jsonl


class SyntheticData:
  """Deterministic batches from a seed; its position is its checkpointable state."""

  def __init__(self, seed=0, batch=2, seq=16, vocab=256):
    self.seed, self.batch, self.seq, self.vocab, self.i = seed, batch, seq, vocab, 0

  def __iter__(self):
    return self

  def __next__(self):
    rng = np.random.default_rng([self.seed, self.i])
    self.i += 1
    ids = rng.integers(3, self.vocab, (self.batch, self.seq + 1)).astype(np.int32)
    mask = np.ones((self.batch, self.seq), np.int32)
    mask[:, : self.seq // 4] = 0  # a "prompt" that is not scored
    return dict(
      input_ids=ids[:, :-1],
      targets=ids[:, 1:],
      loss_mask=mask,
      positions=np.tile(np.arange(self.seq, dtype=np.int32), (self.batch, 1)),
      segment_ids=np.ones((self.batch, self.seq), np.int32),
    )

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = state["i"]


def _model():
  cfg = ModelConfig.preset("gemma2-tiny", num_hidden_layers=2)
  return Transformer(cfg, rngs=nnx.Rngs(0))


def _run(workdir, steps, total=6):
  opt = OptimizerConfig(learning_rate=3e-3, warmup_steps=2, steps=total, weight_decay=0.1)
  cfg = TrainerConfig(
    workdir=str(workdir),
    steps=steps,
    log_every=1,
    checkpoint_every=3,
    eval_every=3,
    eval_batches=1,
    progress=False,
    async_checkpointing=True,
  )
  model = _model()
  trainer = Trainer(
    model, opt, cfg, train_data=SyntheticData(), eval_data=lambda: SyntheticData(seed=99)
  )
  summary = trainer.run()
  return model, summary


def test_resume_is_bit_exact(tmp_path):
  straight, _ = _run(tmp_path / "a", 6)
  _run(tmp_path / "b", 3)
  resumed, summary = _run(tmp_path / "b", 6)
  a = jax.tree.leaves(nnx.state(straight, nnx.Param))
  b = jax.tree.leaves(nnx.state(resumed, nnx.Param))
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The weights did move, and the logs cover each step exactly once.
  assert not np.array_equal(
    np.asarray(a[0]), np.asarray(jax.tree.leaves(nnx.state(_model(), nnx.Param))[0])
  )
  la = read_jsonl(tmp_path / "a" / "metrics.jsonl")
  lb = read_jsonl(tmp_path / "b" / "metrics.jsonl")
  assert [l["step"] for l in lb] == [1, 2, 3, 4, 5, 6] == [l["step"] for l in la]
  assert [l["loss"] for l in la] == [l["loss"] for l in lb]
  for key in ("step", "loss", "tokens_per_sec", "learning_rate"):
    assert key in la[0]
  assert "eval_loss" in la[2] and "eval_loss" in la[5]
  assert summary["steps"] == 6
  for name in ("summary.json", "loss_curve.png"):
    assert os.path.getsize(tmp_path / "b" / name) > 0
  assert os.listdir(tmp_path / "b" / "tensorboard")
  assert json.load(open(tmp_path / "b" / "summary.json"))["final_eval_loss"] is not None
