"""Direct preference optimisation (DPO) of a Gemma / Llama model on {prompt, chosen, rejected}
pairs.

    python experiments/dpo.py --config experiments/configs/dpo_demo.py [--config.steps=50 ...]

The config (every key, its type and range: DPO in experiments/schemas.py) reads as a recipe:
model, pairs, method, loss, optimizer, loop. The reference policy is the model the run starts
from: with `method` lora/dora it is the same model with its adapters switched off (no second copy
of the weights); with `full` a frozen copy scores every batch (gemmax.train.dpo.ReferenceScores).
Held-out pairs (`data.validation`) are scored before training (`eval_before`) and after it:
preference accuracy by implicit reward (chosen reward > rejected reward) and by the policy's own
likelihood (log p(chosen) > log p(rejected)), reward margins and log-probabilities.

Writes to `workdir`: checkpoints/, metrics.jsonl (per step: loss, accuracy, chosen_rewards,
rejected_rewards, margins, chosen_logps, rejected_logps, logps_accuracy, ...), tensorboard/,
loss_curve.png, dpo_curves.png (rewards, margins and the log-ratio to the reference over steps),
summary.json (with the held-out scores before and after) and adapter/ (HF PEFT format).

Running the same command again resumes from the last complete checkpoint; a workdir holding a run
with a different config is refused. Exit statuses (gemmax/cli.py): 0 done, 2 a bad input (one line
on stderr), 75 preempted (run the command again to resume). docs/post_training.md explains it.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from gemmax import cli, schema
from gemmax.errors import ConfigError

import build
from schemas import DPO

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")

RESUME_MAY_DIFFER = schema.may_differ(DPO)  # keys that do not change the trained weights


def check_config(c) -> None:
  """Raises ConfigError naming the first unknown key or invalid value: the schema's types and
  ranges (experiments/schemas.py), then what relates several keys and the files named."""
  schema.check(c, DPO)
  checks = [
    (not (c.quantize and c.method == "full"), "quantize='nf4' needs method lora or dora"),
    (
      c.data.batch_size % c.optimizer.grad_accum == 0,
      f"data.batch_size {c.data.batch_size} must be a positive multiple of optimizer.grad_accum "
      f"{c.optimizer.grad_accum} (micro-batches hold whole pairs)",
    ),
    (
      not (c.dpo.loss_type == "ipo" and c.dpo.label_smoothing),
      f"dpo.label_smoothing {c.dpo.label_smoothing} applies to the sigmoid and robust losses; "
      "ipo has none: set it to 0",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
  build.check_sources(c, (("data.train", c.data.train), ("data.validation", c.data.validation)))


def dpo_config(c):
  from gemmax.train.dpo import DPOConfig

  return DPOConfig(**c.dpo.to_dict()).validate()


def read_pairs(c):
  """The checked pairs of data.train and data.validation (a bad row fails naming file and row):
  read before the model loads, so a bad file fails in a second."""
  from gemmax.data import PairSpec, load_pairs

  d = c.data
  train, _ = load_pairs(PairSpec(d.train), d.on_bad_rows)
  held_out = load_pairs(PairSpec(d.validation), d.on_bad_rows)[0] if d.validation else None
  return train, held_out


def data(c, tok, model, pairs):
  """(training batches, factory of held-out batch iterators or None, held-out pair count). With
  method full both carry the frozen reference's scores (one copy of the starting weights)."""
  from gemmax.data import preference_batches, tokenize_pairs
  from gemmax.train.dpo import ReferenceScores

  d = c.data
  tokenized = [
    tokenize_pairs(p, tok, d.template or None, d.seq_len)[0] if p else None for p in pairs
  ]
  train = preference_batches(tokenized[0], d.batch_size, d.seq_len, seed=c.seed)
  held_out = tokenized[1]
  ref = ReferenceScores(train, model) if c.method == "full" else None

  def evaluate():
    it = preference_batches(held_out, d.eval_batch_size, d.seq_len, shuffle=False, epochs=1)
    return ref.wrap(it) if ref is not None else it

  return (ref or train), (evaluate if held_out else None), len(held_out or ())


def preference_scores(metrics: dict) -> dict:
  """The held-out scores of Trainer.evaluate()'s eval_* means."""
  m = {k.removeprefix("eval_"): v for k, v in metrics.items()}
  keys = ("pairs", "loss", "chosen_rewards", "rejected_rewards", "margins")
  out = {"reward_accuracy": m["accuracy"], "likelihood_accuracy": m["logps_accuracy"]}
  out.update({k: m[k] for k in keys})
  out["logps_margin"] = m["chosen_logps"] - m["rejected_logps"]
  return out


def _line(name: str, s: dict) -> str:
  return (
    f"{name}: reward accuracy {s['reward_accuracy']:.2%}, likelihood accuracy "
    f"{s['likelihood_accuracy']:.2%}, reward margin {s['margins']:+.4f}, log-prob margin "
    f"{s['logps_margin']:+.3f}, loss {s['loss']:.4f}"
  )


def plot_dpo_curves(history: list[dict], beta: float, path: str, before=None, after=None):
  """Rewards and margin over steps, the policy's log-ratio to the reference (rewards / beta: an
  implicit KL measure, on the data's completions rather than the policy's own samples, so it may
  be negative), and preference accuracies; held-out points
  as markers (`before`: step 0; `after`: {"step", eval_* metrics} when not in the history)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  def series(key, prefix=""):
    pts = [(h["step"], h[prefix + key]) for h in history if prefix + key in h]
    if prefix == "eval_" and before is not None and "eval_" + key in before:
      pts = [(0, before["eval_" + key])] + pts
    if prefix == "eval_" and after is not None and after["step"] not in [p[0] for p in pts]:
      pts = pts + [(after["step"], after["eval_" + key])]
    return list(zip(*pts)) if pts else None

  fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=100)
  for key, label in (
    ("chosen_rewards", "chosen reward"),
    ("rejected_rewards", "rejected reward"),
    ("margins", "margin"),
  ):
    (line,) = axes[0].plot(*series(key), label=f"train {label}")
    if series(key, "eval_"):
      axes[0].plot(*series(key, "eval_"), "o--", color=line.get_color(), label=f"held-out {label}")
  axes[0].set_ylabel("beta * log(pi / pi_ref)")
  axes[0].set_title("implicit rewards")
  for key, label in (("chosen_rewards", "chosen"), ("rejected_rewards", "rejected")):
    steps, values = series(key)
    axes[1].plot(steps, [v / beta for v in values], label=label)
  logged = [h for h in history if "chosen_rewards" in h]
  mean = [(h["chosen_rewards"] + h["rejected_rewards"]) / (2 * beta) for h in logged]
  axes[1].plot([h["step"] for h in logged], mean, "k-", lw=2, label="mean (implicit KL measure)")
  axes[1].set_ylabel("log pi - log pi_ref (nats / completion)")
  axes[1].set_title("log-ratio to the reference")
  for key, prefix, label in (
    ("accuracy", "", "train reward accuracy"),
    ("accuracy", "eval_", "held-out reward accuracy"),
    ("logps_accuracy", "eval_", "held-out likelihood accuracy"),
  ):
    if series(key, prefix):
      axes[2].plot(*series(key, prefix), "o--" if prefix else "-", label=label)
  axes[2].set_ylim(-0.02, 1.02)
  axes[2].set_title("preference accuracy")
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def _finished(c) -> dict | None:
  """A finished run's summary (this workdir, same config): nothing to redo."""
  path = os.path.join(c.workdir, "summary.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    s = json.load(f)
  return s if s.get("steps", 0) >= c.steps and "dpo_curves" in s else None


def run(c) -> dict:
  """Builds and checks everything, claims the workdir, trains. Bad inputs raise GemmaxError (or
  ValueError / OSError) before anything in the workdir is written."""
  from gemmax.train import Trainer
  from gemmax.train.dpo import dpo_loss_fn
  from gemmax.train.metrics import read_jsonl
  from gemmax.train.workdir import check_workdir, claim_workdir, write_atomic

  run_config = json.loads(c.to_json_best_effort())
  check_workdir(c.workdir, run_config, RESUME_MAY_DIFFER)  # fail before minutes of loading
  loss = dpo_loss_fn(dpo_config(c))
  pairs = read_pairs(c)
  mesh = build.mesh(c.mesh)
  model = build.model(c.model, c.seed, mesh)
  build.check_context(c.data.seq_len, model, source=c.model.path or c.model.preset)
  model = build.adapters(model, c, mesh)
  tok = build.tokenizer(c.model.tokenizer or c.model.path, model.config.vocab_size)
  train, evaluate, held_out = data(c, tok, model, pairs)
  opt = build.optimizer(c)
  loop = build.loop(c, evaluate is not None, save_adapter=c.method != "full")
  claim_workdir(c.workdir, run_config, RESUME_MAY_DIFFER)
  done = _finished(c)
  if done is not None:
    print(f"already done: {done['steps']} steps; outputs in {c.workdir}")
    return done
  trainer = Trainer(model, opt, loop, train_data=train, eval_data=evaluate, mesh=mesh, loss_fn=loss)
  before = None
  if evaluate is not None and c.eval_before:
    before = trainer.evaluate()  # the starting weights: policy = reference
    n = int(before["eval_pairs"])
    print(_line(f"before training ({n} of {held_out} held-out pairs)", preference_scores(before)))
  summary = trainer.run()
  history = read_jsonl(os.path.join(c.workdir, "metrics.jsonl"))
  if evaluate is not None:
    last = history[-1] if history else {}
    final = last.get("step") == c.steps and "eval_loss" in last
    if final:  # the loop's last evaluation: the trained weights
      after = {"step": c.steps, **{k: v for k, v in last.items() if k.startswith("eval_")}}
    else:
      after = {"step": summary["steps"], **trainer.evaluate()}
    summary["preference"] = {
      "file": c.data.validation,
      "held_out_pairs": held_out,
      "after": preference_scores({k: v for k, v in after.items() if k != "step"}),
      **({"before": preference_scores(before)} if before else {}),
    }
    print(_line(f"after {summary['steps']} steps", summary["preference"]["after"]))
  summary["dpo_curves"] = plot_dpo_curves(
    history,
    c.dpo.beta,
    os.path.join(c.workdir, "dpo_curves.png"),
    before,
    after if evaluate is not None else None,
  )
  write_atomic(os.path.join(c.workdir, "summary.json"), json.dumps(summary, indent=2))
  print(
    f"done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
    f"{summary['final_loss']:.4f}, {summary['wall_seconds']:.0f} s; outputs in {c.workdir}"
  )
  return summary


def main(argv):
  logging.set_verbosity(logging.WARNING)  # keep orbax's INFO lines out of the progress bar
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  c = _CONFIG.value
  check_config(c)
  run(c)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
