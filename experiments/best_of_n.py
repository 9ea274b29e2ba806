"""Rejection sampling (Llama 2's first RLHF stage): best-of-n completions become SFT data.

    python experiments/best_of_n.py --config experiments/configs/best_of_n.py
    python experiments/finetune.py --config experiments/configs/rejection_sampling.py

For every prompt row of `data.file` the model samples `n` completions (gemmax's sampler, stop at
the end of its turn); the reward functions (`module:function`, weighted) score them and the best
one, when its total reaches `min_reward`, becomes an Alpaca row of <workdir>/sft.jsonl. The
ordinary fine-tuning job then trains on that file: a recipe of existing pieces, not a new loop.
<workdir>/stats.json holds the reward statistics (mean, std, best-of-n mean, kept fraction, per
function). Bad input exits 2 with one line, before anything is written.
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from gemmax import cli, schema
from gemmax.errors import ConfigError

import build
from schemas import BEST_OF_N, check_model_source

_CONFIG = config_flags.DEFINE_config_file("config", None, "best-of-n config file")


def _weights(text: str):
  try:
    return [float(w) for w in text.split(",") if w.strip()]
  except ValueError:
    raise ConfigError(f"weights: {text!r} is not a comma-separated list of numbers") from None


def run(c) -> dict:
  from gemmax.data import end_of_turn_ids
  from gemmax.evals.answers import split_example
  from gemmax.evals.best_of_n import as_alpaca, best_of_n
  from gemmax.evals.loading import read_records
  from gemmax.evals.rewards import load_rewards
  from gemmax.sampling import Sampler
  from gemmax.train.workdir import check_workdir, claim_workdir, write_atomic

  schema.check(c, BEST_OF_N)
  check_model_source(c)
  if not os.path.exists(c.data.file):
    raise ConfigError(f"data.file: {c.data.file} does not exist")
  rewards = load_rewards(c.rewards, _weights(c.weights))  # imported and checked before sampling
  run_config = json.loads(c.to_json_best_effort())
  check_workdir(c.workdir, run_config)
  rows = read_records(c.data.file, c.data.limit or None)
  model, base, _ = build.trained_model(c.model)
  tok = build.tokenizer(c.model.tokenizer or base, model.config.vocab_size)
  template = c.data.template or None
  prompts = [split_example(tok, {**r, "output": "x"}, template)[0] for r in rows]
  stop = end_of_turn_ids(tok, template) if template not in (None, "alpaca") else []
  claim_workdir(c.workdir, run_config)
  kept, stats = best_of_n(
    Sampler(model, tok),
    prompts,
    rows,
    rewards,
    n=c.n,
    max_new_tokens=c.max_new_tokens,
    temperature=c.temperature,
    top_p=c.top_p if c.top_p < 1.0 else None,
    top_k=c.top_k or None,
    stop=stop,
    min_reward=c.min_reward,
    batch_prompts=c.batch_prompts,
    seed=c.seed,
    progress=c.progress,
  )
  if not kept:
    raise ConfigError(
      f"no prompt's best completion reached min_reward {c.min_reward} "
      f"(best-of-{c.n} mean {stats['best_mean']:.3f}): nothing to train on"
    )
  sft = os.path.join(c.workdir, "sft.jsonl")
  write_atomic(sft, "".join(json.dumps(r) + "\n" for r in as_alpaca(kept)))
  stats["sft_file"] = sft
  write_atomic(os.path.join(c.workdir, "stats.json"), json.dumps(stats, indent=2))
  print(
    f"best-of-{c.n}: {stats['samples']} samples, reward mean {stats['reward_mean']:.3f} "
    f"(std {stats['reward_std']:.3f}), best-of-n mean {stats['best_mean']:.3f}; kept "
    f"{stats['kept']}/{stats['prompts']} prompts -> {sft}"
  )
  return stats


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  run(_CONFIG.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
