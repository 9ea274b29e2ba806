"""Pretraining recipe for the bundled model checkpoints/gemmax-tiny (Gemma 2 architecture, ~6M params).

    python experiments/pretrain.py --config experiments/configs/pretrain.py

Sized for 2 CPU cores and ~30 minutes (~1 epoch of the corpus): float32, seq 256, no remat. The
corpus is rebuilt by `python experiments/prepare_data.py` (see data/README.md for its sources and
licences).
"""
from ml_collections import config_dict


def get_config():
  c = config_dict.ConfigDict()

  # Architecture: every Gemma 2 mechanism (local/global alternation, both softcaps, GQA, tied
  # embeddings, pre+post norms) at a size that trains at thousands of tokens/s on a CPU.
  c.model = config_dict.ConfigDict()
  c.model.family = "gemma2"
  c.model.vocab_size = 8192                 # = the bundled tokenizer
  c.model.hidden_size = 256
  c.model.intermediate_size = 768
  c.model.num_hidden_layers = 4
  c.model.num_attention_heads = 4
  c.model.num_key_value_heads = 2
  c.model.head_dim = 64
  c.model.sliding_window = 128              # local layers 0, 2 see 128 keys; 1, 3 are global
  c.model.query_pre_attn_scalar = 64        # = head_dim, as in Gemma 2 2B/9B
  c.model.attn_logit_softcapping = 50.0
  c.model.final_logit_softcapping = 30.0
  c.model.max_position_embeddings = 2048
  c.model.rope_theta = 10000.0
  c.model.tokenizer = "checkpoints/gemmax-tiny/tokenizer.model"
  c.model.dtype = "float32"                 # compute dtype (bf16 is slow on CPUs without AMX)

  # Data: the corpus cut into ~chunk_chars pieces ("text" records), TREC-6 *train* questions
  # (questions only, no labels), packed into seq_len rows. Every holdout_every-th corpus chunk is
  # held out for the perplexity measurement and never trained on.
  c.data = config_dict.ConfigDict()
  c.data.corpus = "data/corpus/pretrain.txt"
  c.data.trec_train = "data/trec6/train.jsonl"
  c.data.trec_repeats = 2                   # copies of the ~4.3k questions (a small share of tokens)
  c.data.chunk_chars = 800                  # ~225 tokens: most chunks fit one 256-token row
  c.data.holdout_every = 100
  c.data.heldout_chars = 60_000             # held-out text scored for perplexity
  c.data.seq_len = 256
  c.data.batch_size = 8

  # Optimizer: AdamW, warmup + cosine decay.
  c.optimizer = config_dict.ConfigDict()
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.end_lr_fraction = 0.1
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.1
  c.optimizer.clip_norm = 1.0

  # Loop.
  c.steps = 1600
  c.log_every = 10
  c.eval_every = 400
  c.eval_batches = 8
  c.progress = True
  c.seed = 0
  c.workdir = "runs/pretrain"
  c.output = "checkpoints/gemmax-tiny"      # HF-format checkpoint + model card written here
  c.save_dtype = "float32"
  return c
