"""Distillation recipe (generic): every key at its default. Each key, with its type, range and
meaning, is in experiments/schemas.py (DISTILL); other distill recipes start from this one.

    python experiments/distill.py --config experiments/configs/distill.py --config.stage=teacher
    python experiments/distill.py --config experiments/configs/distill.py --config.stage=student

The stages are described in experiments/distill.py. The offline pair (teacher, then student)
reads the same config: the teacher stage writes store.dir, the student stage trains from it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gemmax.schema import defaults  # noqa: E402
from schemas import DISTILL  # noqa: E402


def get_config():
  return defaults(DISTILL)
