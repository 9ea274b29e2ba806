"""Evaluation recipe: classification by label likelihood, perplexity and exact match. Every key,
with its type and range, is in experiments/schemas.py (EVALUATE).

    python experiments/evaluate.py --config experiments/configs/evaluate.py \
        --config.model.path=runs/demo      # a finetune workdir: its base model and its adapter
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gemmax.schema import defaults  # noqa: E402
from schemas import EVALUATE  # noqa: E402


def get_config():
  return defaults(EVALUATE)
