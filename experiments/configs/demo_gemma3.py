"""The main job on Gemma 3: LoRA on the registry's Gemma 3 270M (base model, GGUF Q4_K_M) for
TREC-6 question classification, with the Alpaca prompt.

    python experiments/finetune.py --config experiments/configs/demo_gemma3.py

A base model has no chat template to put the question in, so the prompt is Alpaca's (instruction,
question as input, label as the response). Its vocabulary has 262,144 entries: the loss computes
the output head only for the scored tokens (the label and its eos), never for the prompt's.
Reports the same figures as experiments/configs/demo.py (majority baseline, zero-shot and
fine-tuned accuracy by label likelihood, macro-F1, confusion matrix, accuracy by generation).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from finetune_lora import get_config as _base  # noqa: E402


def get_config():
  c = _base()
  c.model.path = "gemma3-270m"
  c.model.dtype = "bfloat16"  # compute; the frozen base is stored in bf16 too
  c.model.param_dtype = "bfloat16"
  c.data.train = "data/trec6/train.jsonl"
  c.data.validation = ""  # the 538 held-out test questions are the measure
  c.data.format = "alpaca"
  c.data.template = "alpaca"  # a base model: no chat template
  c.data.seq_len = 256  # several packed questions per row
  c.data.batch_size = 8
  c.data.eval_batch_size = 16
  c.classify.file = "data/trec6/test.jsonl"
  c.classify.reduction = "sum"  # log P(label + eos | prompt)
  c.classify.generate = True
  c.method = "lora"
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.dropout = 0.0
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 6
  c.steps = 60  # ~1,400 questions seen; a step costs ~2x SmolLM2's (the run shared 2 cores)
  c.log_every = 10
  c.eval_every = 0
  c.checkpoint_every = 60
  c.workdir = "runs/demo_gemma3"
  return c
