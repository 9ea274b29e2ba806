"""LoRA fine-tuning recipe (generic): every key at its default. Each key, with its type, range and
meaning, is in experiments/schemas.py (FINETUNE); other recipes start from this one.

    python experiments/finetune.py --config experiments/configs/finetune_lora.py \
        --config.model.path=/path/to/hf_checkpoint --config.data.train=train.jsonl
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gemmax.schema import defaults  # noqa: E402
from schemas import FINETUNE  # noqa: E402


def get_config():
  c = defaults(FINETUNE)
  c.workdir = "runs/finetune_lora"
  return c
