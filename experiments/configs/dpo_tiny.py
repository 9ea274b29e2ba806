"""LoRA-DPO on the bundled model (checkpoints/gemmax-tiny, Gemma 2 architecture, 5.2M parameters)
with TREC-6 preference pairs (chosen: the right label, rejected: a wrong one; built by
experiments/prepare_pairs.py), Alpaca prompt: the DPO path on a tiny model, for fast checks.

    python experiments/dpo.py --config experiments/configs/dpo_tiny.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gemmax.schema import defaults  # noqa: E402
from schemas import DPO  # noqa: E402


def get_config():
  c = defaults(DPO)
  c.model.path = "checkpoints/gemmax-tiny"
  c.model.dtype = "float32"
  c.data.train = "data/trec6/pairs_train.jsonl"
  c.data.validation = "data/trec6/pairs_test.jsonl"
  c.data.template = "alpaca"
  c.data.seq_len = 128  # the instruction, the question and one label word
  c.data.batch_size = 8
  c.data.eval_batch_size = 16
  c.method = "lora"
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.dpo.beta = 0.1
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 5
  c.steps = 40
  c.log_every = 5
  c.eval_every = 20
  c.eval_batches = 4  # 64 held-out pairs
  c.checkpoint_every = 20
  c.workdir = "runs/dpo_tiny"
  return c
