"""Chat with a model in the terminal, or answer one prompt (`--config.prompt="..."`).

    python experiments/generate.py --config experiments/configs/generate.py
    python experiments/generate.py --config experiments/configs/generate.py --config.prompt="Hi!"
"""
from ml_collections import config_dict


def get_config():
  c = config_dict.ConfigDict()
  c.model = config_dict.ConfigDict()
  c.model.path = "smollm2-135m-instruct"    # registry name, HF dir, .gguf or finetune workdir
  c.model.tokenizer = ""                    # "" = model.path
  c.model.adapter = ""                      # finetune workdir or HF PEFT adapter dir
  c.model.quantize = ""                     # "" | "nf4"
  c.model.dtype = "float32"

  c.prompt = ""            # one-shot mode when set; interactive chat otherwise
  c.chat_template = ""     # "" = the model's own, else by family | gemma | llama3 | <jinja> | none
  c.system = ""            # optional system message
  c.max_new_tokens = 256
  c.max_len = 2048         # KV cache length (the whole conversation must fit)
  c.temperature = 0.7      # 0 = greedy
  c.top_k = 64             # 0 = off
  c.top_p = 0.95           # 1.0 = off
  c.seed = 0
  return c
