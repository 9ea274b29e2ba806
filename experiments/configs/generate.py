"""Chat with a model in the terminal, or answer one prompt (`--config.prompt="..."`). Every key,
with its type and range, is in experiments/schemas.py (GENERATE).

    python experiments/generate.py --config experiments/configs/generate.py
    python experiments/generate.py --config experiments/configs/generate.py --config.prompt="Hi!"
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gemmax.schema import defaults  # noqa: E402
from schemas import GENERATE  # noqa: E402


def get_config():
  return defaults(GENERATE)
