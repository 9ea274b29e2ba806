"""LoRA fine-tuning recipe (generic). Every field is listed here; other configs start from it.

    python experiments/finetune.py --config experiments/configs/finetune_lora.py \
        --config.model.path=/path/to/hf_checkpoint --config.data.train=train.jsonl
"""
from ml_collections import config_dict


def get_config():
  c = config_dict.ConfigDict()

  # Model: an HF checkpoint directory, or a preset name for a randomly initialised model.
  c.model = config_dict.ConfigDict()
  c.model.path = "checkpoints/gemmax-tiny"   # HF dir, .gguf file or registry name; "" = preset
  c.model.preset = ""                         # e.g. "gemma2-tiny" when path is ""
  c.model.tokenizer = ""                      # tokenizer file or dir; "" = model.path
  c.model.dtype = "bfloat16"                  # compute dtype (CPUs without bf16 matmul: float32)
  c.model.param_dtype = ""                    # base weight storage; "" = checkpoint dtype
  c.model.remat = "none"                      # none | full | save_dots
  c.model.attn_impl = "auto"

  # Data: JSONL/CSV/Parquet files, example format and sequence packing.
  c.data = config_dict.ConfigDict()
  c.data.train = "data/alpaca/train.jsonl"
  c.data.validation = "data/alpaca/validation.jsonl"  # "" for no evaluation
  c.data.format = "alpaca"                    # alpaca | chat | text
  c.data.template = ""                        # "" = by kind | alpaca | gemma | llama3 | model | <jinja>
  c.data.seq_len = 512
  c.data.packing = True
  c.data.batch_size = 8                       # sequences per optimizer step (all micro-batches)
  c.data.eval_batch_size = 8
  c.data.workers = 0                          # grain worker processes
  c.data.on_bad_rows = "fail"                 # fail (naming file and row) | skip (and report)

  # Method: full fine-tuning or an adapter, optionally over a 4-bit NF4 base (QLoRA / QDoRA).
  c.method = "lora"                           # full | lora | dora
  c.lora = config_dict.ConfigDict()
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.targets = "all-linear"               # or e.g. "q_proj,v_proj" or a regex
  c.lora.dropout = 0.05
  c.lora.rslora = False
  c.quantize = config_dict.placeholder(str)   # None | "nf4"

  # Optimizer: AdamW, linear warmup + cosine decay, global-norm clipping.
  c.optimizer = config_dict.ConfigDict()
  c.optimizer.learning_rate = 2e-4
  c.optimizer.warmup_steps = 20
  c.optimizer.end_lr_fraction = 0.1
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 1.0
  c.optimizer.grad_accum = 1                  # micro-batches per step (batch_size splits)

  # Classification before/after training (label likelihood on Alpaca rows whose output is the
  # class): zero-shot accuracy, fine-tuned accuracy, and the training file's majority class.
  c.classify = config_dict.ConfigDict()
  c.classify.file = ""                        # "" = skip; e.g. "data/trec6/test.jsonl"
  c.classify.limit = 0                        # 0 = every row
  c.classify.reduction = "mean"               # mean | sum of the label tokens' logprobs
  c.classify.generate = False                 # also answer by greedy generation (exact match)

  # Export at the end of the run: the model with adapters merged, as a GGUF file for llama.cpp /
  # Ollama / LM Studio (workdir/model-<type>.gguf).
  c.export = config_dict.ConfigDict()
  c.export.gguf = ""                          # "" = none | f16 | bf16 | q8_0 | f32

  # Devices: a mesh over every device of every process (ignored on a single device). -1 = the
  # rest. data.batch_size is per process; the global batch is batch_size x processes.
  c.mesh = config_dict.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.multihost = False                         # True on pods / several hosts: jax.distributed.initialize()

  # Loop.
  c.steps = 500
  c.log_every = 10
  c.eval_every = 100
  c.eval_batches = 20                         # 0 = the whole validation set
  c.checkpoint_every = 100
  c.keep_checkpoints = 3
  c.save_merged = False                       # also write the merged model in HF format
  c.progress = True
  c.halt_on_nonfinite = False                 # NaN/Inf loss or grads: False skips the update
  c.workdir = "runs/finetune_lora"
  c.seed = 0
  return c
