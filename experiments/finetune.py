"""Fine-tune a Gemma 2 / Llama model: full, LoRA, DoRA, QLoRA or QDoRA.

    python experiments/finetune.py --config experiments/configs/demo.py [--config.steps=50 ...]

The config (see experiments/configs/finetune_lora.py for every field) reads as a recipe: model,
data, method, optimizer, loop. Writes to `workdir`: checkpoints/, metrics.jsonl, tensorboard/,
loss_curve.png, summary.json, adapter/ (HF PEFT format) and optionally merged/ (HF format).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")

# Every key a config may hold (dotted); anything else is a typo and fails before any work.
SCHEMA = {
    "model": {"path", "preset", "tokenizer", "dtype", "param_dtype", "remat", "attn_impl"},
    "data": {"train", "validation", "format", "template", "seq_len", "packing", "batch_size",
             "eval_batch_size", "workers"},
    "lora": {"rank", "alpha", "targets", "dropout", "rslora"},
    "optimizer": {"learning_rate", "warmup_steps", "end_lr_fraction", "b1", "b2", "weight_decay",
                  "clip_norm", "grad_accum"},
    "": {"method", "quantize", "steps", "log_every", "eval_every", "eval_batches",
         "checkpoint_every", "keep_checkpoints", "save_merged", "progress", "workdir", "seed"},
}


class ConfigError(ValueError):
  """A config value that cannot work; reported as one line, exit status 2."""


def check_config(c) -> None:
  """Raises ConfigError naming the first unknown key or invalid value."""
  for key, value in c.items():
    if key in SCHEMA and key:
      for sub in value.keys():
        if sub not in SCHEMA[key]:
          raise ConfigError(f"unknown config key '{key}.{sub}' (known: {', '.join(sorted(SCHEMA[key]))})")
    elif key not in SCHEMA[""]:
      raise ConfigError(f"unknown config key '{key}'")
  missing = [f"{s}.{k}" if s else k for s, keys in SCHEMA.items() for k in keys
             if (c.get(s) if s else c).get(k, "<missing>") == "<missing>" and k != "quantize"]
  if missing:
    raise ConfigError(f"config lacks key(s) {', '.join(missing)}")
  checks = [
      (c.method in ("full", "lora", "dora"), f"method must be full|lora|dora, got {c.method!r}"),
      (c.quantize in (None, "nf4"), f"quantize must be None or 'nf4', got {c.quantize!r}"),
      (not (c.quantize and c.method == "full"), "quantize='nf4' needs method lora or dora"),
      (c.optimizer.learning_rate > 0, f"optimizer.learning_rate must be > 0, got {c.optimizer.learning_rate}"),
      (c.steps > 0, f"steps must be > 0, got {c.steps}"),
      (c.method == "full" or c.lora.rank > 0, f"lora.rank must be > 0, got {c.lora.rank}"),
      (0 <= c.lora.dropout < 1, f"lora.dropout must be in [0, 1), got {c.lora.dropout}"),
      (c.optimizer.warmup_steps >= 0, f"optimizer.warmup_steps must be >= 0, got {c.optimizer.warmup_steps}"),
      (c.optimizer.grad_accum > 0, f"optimizer.grad_accum must be > 0, got {c.optimizer.grad_accum}"),
      (c.data.batch_size > 0 and c.data.batch_size % c.optimizer.grad_accum == 0,
       f"data.batch_size {c.data.batch_size} must be a positive multiple of optimizer.grad_accum "
       f"{c.optimizer.grad_accum}"),
      (c.data.seq_len >= 2, f"data.seq_len must be >= 2, got {c.data.seq_len}"),
      (c.data.format in ("alpaca", "chat", "text"), f"data.format must be alpaca|chat|text, got {c.data.format!r}"),
      (c.model.remat in ("none", "full", "save_dots"), f"model.remat must be none|full|save_dots, got {c.model.remat!r}"),
      (bool(c.model.path) != bool(c.model.preset), "set exactly one of model.path and model.preset"),
      (bool(c.model.path or c.model.tokenizer), "a preset model needs model.tokenizer"),
      (bool(c.data.train), "data.train is empty"),
      (c.log_every > 0, f"log_every must be > 0, got {c.log_every}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
  for name in ("train", "validation"):
    path = c.data[name]
    if path and not os.path.exists(path):
      raise ConfigError(f"data.{name}: {path} does not exist")
  if c.model.path and not os.path.isdir(c.model.path):
    raise ConfigError(f"model.path: {c.model.path} is not a directory")


def build_model(c):
  """The base model (HF dir or random preset), with adapters applied for lora/dora."""
  from flax import nnx
  from gemmax import peft
  from gemmax.convert import load_hf
  from gemmax.models import ModelConfig, Transformer

  run = dict(remat=c.model.remat, attn_impl=c.model.attn_impl)
  if c.model.path:
    model = load_hf(c.model.path, dtype=c.model.param_dtype or None, compute_dtype=c.model.dtype,
                    **run)
  else:
    cfg = ModelConfig.preset(c.model.preset, dtype=c.model.dtype,
                             param_dtype=c.model.param_dtype or "float32", **run)
    model = Transformer(cfg, rngs=nnx.Rngs(c.seed))
  if c.method != "full":
    peft.apply(model, method=c.method, rank=c.lora.rank, alpha=c.lora.alpha,
               targets=_targets(c.lora.targets), dropout=c.lora.dropout, rslora=c.lora.rslora,
               quantize=c.quantize, rngs=nnx.Rngs(params=c.seed, dropout=c.seed + 1))
  return model


def _targets(t):
  if isinstance(t, str) and "," in t:
    return [s.strip() for s in t.split(",") if s.strip()]
  return t


def build_data(c, vocab_size):
  """(train iterator, eval iterator factory or None)."""
  from gemmax import data

  tok = data.load_tokenizer(c.model.tokenizer or c.model.path)
  data.check_vocab(tok, vocab_size)
  spec = lambda path: data.SourceSpec(path, kind=c.data.format, template=c.data.template)
  train = data.make_pipeline(spec(c.data.train), tok, data.DataConfig(
      seq_len=c.data.seq_len, batch_size=c.data.batch_size, seed=c.seed, packing=c.data.packing,
      worker_count=c.data.workers))
  evaluate = None
  if c.data.validation:
    eval_cfg = data.DataConfig(seq_len=c.data.seq_len, batch_size=c.data.eval_batch_size,
                               shuffle=False, num_epochs=1, packing=c.data.packing, prefetch=0)
    evaluate = lambda: data.make_pipeline(spec(c.data.validation), tok, eval_cfg)
  return train, evaluate


def run(c) -> dict:
  from gemmax.train import OptimizerConfig, Trainer, TrainerConfig

  try:  # bad files / shapes / vocabularies: one line, not a traceback
    model = build_model(c)
    train, evaluate = build_data(c, model.config.vocab_size)
  except (ValueError, FileNotFoundError) as e:
    print(f"finetune.py: error: {e}", file=sys.stderr)
    sys.exit(2)
  o = c.optimizer
  opt = OptimizerConfig(learning_rate=o.learning_rate, warmup_steps=o.warmup_steps, steps=c.steps,
                        end_lr_fraction=o.end_lr_fraction, b1=o.b1, b2=o.b2,
                        weight_decay=o.weight_decay, clip_norm=o.clip_norm or None)
  loop = TrainerConfig(
      workdir=c.workdir, steps=c.steps, accum_steps=o.grad_accum, log_every=c.log_every,
      eval_every=c.eval_every if evaluate else 0, eval_batches=c.eval_batches,
      checkpoint_every=c.checkpoint_every, keep_checkpoints=c.keep_checkpoints, seed=c.seed,
      progress=c.progress, save_adapter=c.method != "full", save_merged=c.save_merged)
  os.makedirs(c.workdir, exist_ok=True)
  with open(os.path.join(c.workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(c.to_json_best_effort(indent=2))
  trainer = Trainer(model, opt, loop, train_data=train, eval_data=evaluate)
  summary = trainer.run()
  print(f"done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
        f"{summary['final_loss']:.4f}, {summary['tokens_per_sec'] or 0:,.0f} tokens/s; "
        f"outputs in {c.workdir}")
  return summary


def main(argv):
  logging.set_verbosity(logging.WARNING)  # keep orbax's INFO lines out of the progress bar
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  c = _CONFIG.value
  try:
    check_config(c)
  except ConfigError as e:
    print(f"finetune.py: config error: {e}", file=sys.stderr)
    sys.exit(2)
  run(c)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
