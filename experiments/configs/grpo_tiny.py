"""GRPO on the bundled model (checkpoints/gemmax-tiny, Gemma 2 architecture, Alpaca prompt) for
TREC-6 labels with a first-word reward: the demo's path on a tiny model, for fast checks.

    python experiments/grpo.py --config experiments/configs/grpo_tiny.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gemmax.schema import defaults  # noqa: E402
from schemas import GRPO  # noqa: E402


def get_config():
  c = defaults(GRPO)
  c.model.path = "checkpoints/gemmax-tiny"
  c.model.dtype = "float32"
  c.data.train = "data/trec6/train.jsonl"
  c.data.format = "alpaca"
  c.rewards.functions = "gemmax.evals.rewards:first_word_match"
  c.num_generations = 4
  c.prompts_per_step = 2
  c.max_completion_length = 4
  c.temperature = 1.0
  c.grpo.beta = 0.04
  c.method = "lora"
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.optimizer.learning_rate = 1e-3
  c.evaluate.file = "data/trec6/test.jsonl"
  c.evaluate.limit = 16
  c.evaluate.max_new_tokens = 4
  c.steps = 6
  c.log_every = 1
  c.checkpoint_every = 3
  c.workdir = "runs/grpo_tiny"
  return c
