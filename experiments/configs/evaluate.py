"""Evaluation recipe: classification by label likelihood, perplexity and exact match.

    python experiments/evaluate.py --config experiments/configs/evaluate.py \
        --config.model.path=runs/demo      # a finetune workdir: its base model and its adapter
"""
from ml_collections import config_dict


def get_config():
  c = config_dict.ConfigDict()
  c.model = config_dict.ConfigDict()
  c.model.path = "smollm2-135m-instruct"    # registry name, HF dir, .gguf or finetune workdir
  c.model.tokenizer = ""                    # "" = model.path
  c.model.adapter = ""                      # finetune workdir or HF PEFT adapter dir; "" = none
  c.model.quantize = ""                     # "" | "nf4" (a workdir's own setting is used if set)
  c.model.dtype = "float32"                 # compute dtype

  c.tasks = "classification,perplexity"     # comma list of classification|perplexity|exact_match
  c.workdir = "runs/eval"                   # eval_report.json and confusion_matrix.png go here
  c.batch_size = 8
  c.progress = True

  # Rows: alpaca JSONL (instruction, input, output = the class) or text/label JSONL.
  c.classification = config_dict.ConfigDict()
  c.classification.file = "data/trec6/validation.jsonl"
  c.classification.format = "alpaca"        # alpaca | text_label
  c.classification.prompt = ""              # alpaca rows: "" = as the run trained (else the Alpaca
                                            # prompt) | alpaca | gemma | llama3 | model | <jinja>
  c.classification.template = "{text}"      # prompt template (text_label format)
  c.classification.label_template = "{label}"  # how a class is written after the prompt
  c.classification.classes = ""             # comma list; "" = the sorted gold labels
  c.classification.reduction = "mean"       # mean | sum of label-token logprobs
  c.classification.few_shot = 0             # examples from few_shot_file prepended to each prompt
  c.classification.few_shot_file = ""       # "" = take them from data/..../train.jsonl if it exists
  c.classification.limit = 0                # 0 = all rows

  c.perplexity = config_dict.ConfigDict()
  c.perplexity.file = "data/pretrain_sample.txt"
  c.perplexity.window = 256
  c.perplexity.stride = 0                   # 0 = window // 2
  c.perplexity.max_chars = 200_000          # 0 = whole file

  c.exact_match = config_dict.ConfigDict()
  c.exact_match.file = "data/trec6/validation.jsonl"  # alpaca JSONL; output is the reference
  c.exact_match.max_new_tokens = 8
  c.exact_match.limit = 64
  return c
