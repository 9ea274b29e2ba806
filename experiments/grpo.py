"""GRPO with verifiable rewards: the policy samples G completions per prompt, reward functions
score them, and the group-relative objective (gemmax.train.grpo) raises the better ones.

    python experiments/grpo.py --config experiments/configs/grpo_demo.py [--config.steps=50 ...]

The config (every key, its type and range: GRPO in experiments/schemas.py): model (HF dir, .gguf
file or registry name), prompts (data.*: Alpaca or chat rows whose answer is the reference the
rewards see), rewards ("module:function" callables with weights, gemmax.evals.rewards), sampling
(num_generations, prompts_per_step, temperature, top_p, top_k, max_completion_length), the
objective (grpo.*: beta, epsilon, epsilon_high, loss_type, scale_rewards), method (lora/dora; full
fine-tuning only with grpo.beta = 0: the reference is the model with its adapters switched off),
optimizer and loop. Each step samples from the current parameters (gemmax.posttrain.GRPORollouts).

Writes to `workdir`: checkpoints/, metrics.jsonl (loss, kl, clip fractions, reward and reward_std
per function and in total, completion_length, sampling and training tokens/s), tensorboard/,
loss_curve.png, rewards.png (reward and KL against step), adapter/, and summary.json with, for
`evaluate.file`, the greedy answers' exact match on held-out rows before and after training.

Running the same command again resumes exactly (the prompts and sampling keys derive from the
seed and the step); a workdir holding another run is refused. Exit statuses (gemmax/cli.py): 0
done, 2 a bad input (one line on stderr), 75 preempted. docs/grpo.md has the demo's figures.
"""

from __future__ import annotations

import collections
import json
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build  # noqa: E402
from gemmax import cli, schema  # noqa: E402
from gemmax.errors import ConfigError  # noqa: E402
from schemas import GRPO  # noqa: E402

RESUME_MAY_DIFFER = schema.may_differ(GRPO)


def reward_weights(w) -> list[float] | None:
  """rewards.weights: a list, or a comma-separated string ("" = 1 each)."""
  if isinstance(w, str):
    w = [s.strip() for s in w.split(",") if s.strip()]
  try:
    return [float(x) for x in w] or None
  except (TypeError, ValueError):
    raise ConfigError(f"rewards.weights must be numbers, got {w!r}") from None


def load_rewards(c):
  from gemmax.evals.rewards import load_rewards

  return load_rewards(c.rewards.functions, reward_weights(c.rewards.weights))


def grpo_config(c):
  from gemmax.train.grpo import GRPOConfig

  return GRPOConfig(
    beta=c.grpo.beta,
    epsilon=c.grpo.epsilon,
    epsilon_high=c.grpo.epsilon_high,
    loss_type=c.grpo.loss_type,
    scale_rewards=c.grpo.scale_rewards,
    max_completion_length=c.max_completion_length,
  ).validate()


def check_config(c):
  """Raises ConfigError naming the first unknown key or bad value, the relations between keys,
  a missing file or a reward function that does not import; returns the Rewards."""
  schema.check(c, GRPO)
  checks = [
    (
      c.num_generations >= 2,
      f"num_generations must be >= 2 (a group of one has advantage 0), got {c.num_generations}",
    ),
    (
      c.method != "full" or c.grpo.beta == 0,
      f"method full with grpo.beta {c.grpo.beta} > 0: the KL reference is the model with its "
      "adapters switched off, so use method lora or dora (or grpo.beta = 0)",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
  build.check_sources(c, (("data.train", c.data.train), ("evaluate.file", c.evaluate.file)))
  grpo_config(c)
  return load_rewards(c)


def held_out(c, model, tok, rows, stage: str) -> dict:
  """Greedy answers' exact match on the held-out rows (gemmax.evals.answers.generate_rows: the
  prompt as training renders it, the answer read up to its closing token)."""
  from gemmax.evals.answers import generate_rows

  m = generate_rows(
    model,
    tok,
    rows,
    template=c.data.template or None,
    max_new_tokens=c.evaluate.max_new_tokens,
    batch_size=c.evaluate.batch_size,
    progress=c.progress,
  )
  print(
    f"{stage}: greedy exact match {m['exact_match']:.2%} on {len(rows)} rows of "
    f"{c.evaluate.file} ({m['not_a_class']} answers that are no label; most common: "
    f"{collections.Counter(m['answers']).most_common(3)})",
    flush=True,
  )
  from gemmax.evals.exact_match import normalize

  lowered = [normalize(a) == normalize(r["output"]) for a, r in zip(m["answers"], rows)]
  return {
    "exact_match": m["exact_match"],
    "exact_match_lowercase": sum(lowered) / max(len(rows), 1),
    "not_a_class": m["not_a_class"],
    "rows": len(rows),
    "answers": collections.Counter(m["answers"]).most_common(10),
  }


def plot_rewards(history: list[dict], path: str) -> str:
  """Reward (batch mean +- one std, and its running mean) and KL to the reference against step."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
  rows = [h for h in history if "reward" in h]
  steps = [h["step"] for h in rows]
  mean = [h["reward"] for h in rows]
  std = [h.get("reward_std", 0.0) for h in rows]
  ax1.plot(steps, mean, lw=0.8, alpha=0.6, label="reward (batch mean)")
  ax1.fill_between(
    steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.1
  )
  if len(mean) >= 10:  # the batch mean is noisy: also its running mean over 10 logged steps
    smooth = [
      sum(mean[max(0, i - 9) : i + 1]) / len(mean[max(0, i - 9) : i + 1]) for i in range(len(mean))
    ]
    ax1.plot(steps, smooth, color="C0", lw=2, label="running mean (10)")
  ax1.set_xlabel("step")
  ax1.set_ylabel("reward")
  ax1.grid(alpha=0.3)
  ax1.legend()
  kl = [(h["step"], h["kl"]) for h in history if "kl" in h]
  if kl:
    ax2.plot(*zip(*kl), color="C1", label="KL to the reference (k3, per token)")
  ax2.set_xlabel("step")
  ax2.set_ylabel("KL")
  ax2.grid(alpha=0.3)
  ax2.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def run(c, rewards=None) -> dict:
  """Builds and checks everything, claims the workdir, evaluates, trains, evaluates. Bad inputs
  raise before anything in the workdir is written."""
  from gemmax.evals.loading import read_records
  from gemmax.posttrain import GRPORollouts, read_prompt_rows
  from gemmax.train import Trainer
  from gemmax.train.grpo import grpo_loss_fn
  from gemmax.train.metrics import read_jsonl
  from gemmax.train.workdir import check_workdir, claim_workdir, write_atomic

  rewards = rewards or check_config(c)
  run_config = json.loads(c.to_json_best_effort())
  check_workdir(c.workdir, run_config, RESUME_MAY_DIFFER)
  mesh = build.mesh(c.mesh)
  model = build.adapters(build.model(c.model, c.seed, mesh), c, mesh)
  tok = build.tokenizer(c.model.tokenizer or c.model.path, model.config.vocab_size)
  template = c.data.template or None
  prompts = read_prompt_rows(tok, c.data.train, c.data.format, template, c.data.limit)
  rollouts = GRPORollouts(
    prompts,
    tok,
    rewards,
    num_generations=c.num_generations,
    prompts_per_step=c.prompts_per_step,
    max_completion_length=c.max_completion_length,
    temperature=c.temperature,
    top_p=c.top_p if c.top_p < 1 else None,
    top_k=c.top_k or None,
    scale_rewards=c.grpo.scale_rewards,
    seed=c.seed,
    max_positions=model.config.max_position_embeddings,
  )
  rows = read_records(c.evaluate.file, c.evaluate.limit) if c.evaluate.file else []
  opt = build.optimizer(c)
  loop = build.loop(c, False, save_adapter=c.method != "full")
  loss_fn = grpo_loss_fn(grpo_config(c))
  claim_workdir(c.workdir, run_config, RESUME_MAY_DIFFER)
  before_file = os.path.join(c.workdir, "heldout_before.json")
  before = None
  if rows:
    if os.path.isfile(before_file):  # a resumed run: the base model's score is known
      with open(before_file, encoding="utf-8") as f:
        before = json.load(f)
    else:
      before = held_out(c, model, tok, rows, "before")
      write_atomic(before_file, json.dumps(before, indent=2))
  trainer = Trainer(model, opt, loop, train_data=rollouts, mesh=mesh, loss_fn=loss_fn)
  rollouts.bind(trainer)
  summary = trainer.run()
  history = read_jsonl(os.path.join(c.workdir, "metrics.jsonl"), skip_torn=True)
  summary["rewards_png"] = plot_rewards(history, os.path.join(c.workdir, "rewards.png"))
  logged = [h for h in history if "reward" in h]
  if logged:
    summary["reward_first"], summary["reward_last"] = logged[0]["reward"], logged[-1]["reward"]
    summary["kl_last"] = logged[-1].get("kl")
  summary["sequence_length"] = rollouts.seq_len
  if rows:
    after = held_out(c, model, tok, rows, "after")
    summary["heldout"] = {"file": c.evaluate.file, "before": before, "after": after}
    print(f"held-out greedy exact match: {before['exact_match']:.2%} -> {after['exact_match']:.2%}")
  write_atomic(os.path.join(c.workdir, "summary.json"), json.dumps(summary, indent=2))
  r = f", reward {summary['reward_first']:.3f} -> {summary['reward_last']:.3f}" if logged else ""
  print(f"done: {summary['steps']} steps{r}; outputs in {c.workdir}")
  return summary


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  c = flags.FLAGS.config
  run(c, check_config(c))


if "config" not in flags.FLAGS:  # shared with finetune.py's when both are imported (tests)
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")

if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
