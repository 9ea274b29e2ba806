"""Rejection sampling, stage 2: the main job's LoRA fine-tuning of SmolLM2-135M-Instruct, trained
on the model's own best-of-n answers (experiments/configs/best_of_n.py writes them) instead of
the gold labels. The answers are the model's own words (casing, punctuation), so the classes of
the label-likelihood report would not be the gold ones: evaluate the run with
experiments/evaluate.py (--config.model.adapter=runs/rejection_sampling) instead.

    python experiments/best_of_n.py --config experiments/configs/best_of_n.py
    python experiments/finetune.py --config experiments/configs/rejection_sampling.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import get_config as _demo  # noqa: E402


def get_config():
  c = _demo()
  c.data.train = "runs/best_of_n/sft.jsonl"  # best_of_n.py's output (its workdir)
  c.classify.file = ""
  c.steps = 50
  c.checkpoint_every = 50
  c.workdir = "runs/rejection_sampling"
  return c
