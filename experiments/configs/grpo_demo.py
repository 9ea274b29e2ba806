"""The GRPO demo: LoRA-GRPO on SmolLM2-135M-Instruct with an exact-match reward on TREC-6 labels.

    python experiments/grpo.py --config experiments/configs/grpo_demo.py

Each step puts 4 training questions to the model (its own ChatML template and system prompt, the
assistant turn opened with "Answer type:"), samples 8 answers of up to 6 tokens per question at
temperature 0.9 from the current policy, and rewards an answer that is exactly the label (1.0) or
starts with it (0.5 more). Greedy exact match on 160 held-out test questions is measured before
and after; rewards.png plots reward and KL against step. Sized for about 15 minutes on a 2-core
CPU; docs/grpo.md has the measured figures.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpo_tiny import get_config as _base  # noqa: E402

_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# SmolLM2's own template (ChatML, its default system prompt) with the answer opened by a cue:
# without it the 135M model explains instead of answering (greedy exact match 0 of 64).
TEMPLATE = (
  "{% for message in messages %}"
  "{% if loop.first and messages[0]['role'] != 'system' %}"
  "{{ '<|im_start|>system\\n" + _SYSTEM + "<|im_end|>\\n' }}{% endif %}"
  "{% if message['role'] == 'assistant' %}"
  "{{ '<|im_start|>assistant\\nAnswer type: ' + message['content'] + '<|im_end|>\\n' }}"
  "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
  "{% endif %}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\nAnswer type:' }}{% endif %}"
)


def get_config():
  c = _base()
  c.model.path = "smollm2-135m-instruct"
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "bfloat16"
  c.data.train = "data/trec6/train.jsonl"
  c.data.template = TEMPLATE
  c.rewards.functions = "gemmax.evals.rewards:exact_match,gemmax.evals.rewards:first_word_match"
  c.rewards.weights = "1.0,0.5"
  c.num_generations = 8
  c.prompts_per_step = 4
  c.temperature = 0.9
  c.max_completion_length = 6
  c.grpo.beta = 0.04
  c.method = "lora"
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.optimizer.learning_rate = 1e-4  # 1e-3 (warmup 5): KL 1.2 by step 5, then collapse
  c.optimizer.warmup_steps = 0
  c.evaluate.file = "data/trec6/test.jsonl"
  c.evaluate.limit = 160
  c.evaluate.max_new_tokens = 6
  c.steps = 60
  c.log_every = 1
  c.checkpoint_every = 20
  c.workdir = "runs/grpo_demo"
  return c
