"""Rejection sampling, stage 1: best-of-4 answers of SmolLM2-135M-Instruct to the TREC-6 training
questions, kept when the first word is the right label (experiments/best_of_n.py). Stage 2 is
experiments/configs/rejection_sampling.py. Every key: BEST_OF_N in experiments/schemas.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gemmax.schema import defaults  # noqa: E402
from schemas import BEST_OF_N  # noqa: E402


def get_config():
  c = defaults(BEST_OF_N)
  c.model.dtype = "bfloat16"
  c.data.limit = 256
  return c
