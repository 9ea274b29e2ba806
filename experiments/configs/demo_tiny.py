"""LoRA on the bundled model (checkpoints/gemmax-tiny, Gemma 2 architecture, 5.2M parameters,
pretrained here) for TREC-6 question classification, with the Alpaca prompt: the main job's
path on a tiny model, for fast checks.

    python experiments/finetune.py --config experiments/configs/demo_tiny.py

Small enough for a laptop CPU (float32 compute: most laptop CPUs have no bf16 matmul instructions).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from finetune_lora import get_config as _base  # noqa: E402


def get_config():
  c = _base()
  c.model.path = "checkpoints/gemmax-tiny"
  c.model.dtype = "float32"
  c.data.train = "data/trec6/train.jsonl"
  c.data.validation = "data/trec6/validation.jsonl"
  c.data.format = "alpaca"
  c.data.seq_len = 160  # all but one train row fit (the longest is 169)
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  c.classify.file = "data/trec6/test.jsonl"
  c.classify.reduction = "sum"  # log P(label | prompt): labels are 2-4 pieces
  c.method = "lora"
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.dropout = 0.0
  c.optimizer.learning_rate = 2e-3  # 6e-3 falls back to guessing the majority class
  c.optimizer.warmup_steps = 20
  c.steps = 600
  c.log_every = 10
  c.eval_every = 300
  c.eval_batches = 10
  c.checkpoint_every = 300
  c.workdir = "runs/demo_tiny"
  return c
