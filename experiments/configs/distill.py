"""Distillation recipe (generic). Every field is listed here; other distill configs start from it.

    python experiments/distill.py --config experiments/configs/distill.py --config.stage=teacher
    python experiments/distill.py --config experiments/configs/distill.py --config.stage=student

The stages are described in experiments/distill.py. The offline pair (teacher, then student)
reads the same config: the teacher stage writes store.dir, the student stage trains from it.
"""
from ml_collections import config_dict


def get_config():
  c = config_dict.ConfigDict()
  c.stage = "student"                         # teacher | student | online | compare

  # Teacher: an HF checkpoint directory (its tokenizer is the student's unless set otherwise).
  c.teacher = config_dict.ConfigDict()
  c.teacher.path = "checkpoints/gemmax-tiny"
  c.teacher.dtype = "float32"                 # compute dtype ("" = checkpoint dtype)

  # Student: an HF dir, or a preset (randomly initialised; takes the teacher's vocabulary and
  # special ids) with ModelConfig overrides. Same tokenizer as the teacher.
  c.student = config_dict.ConfigDict()
  c.student.path = ""
  c.student.preset = "gemma2-tiny"
  c.student.overrides = config_dict.ConfigDict(dict(
      hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, head_dim=32, sliding_window=128, query_pre_attn_scalar=32,
      max_position_embeddings=2048))
  c.student.tokenizer = ""                    # "" = student.path, else the teacher's
  c.student.dtype = "float32"                 # compute dtype (bf16 on accelerators)
  c.student.param_dtype = ""                  # "" = checkpoint dtype / float32
  c.student.remat = "none"

  # Method: full training of the student, or LoRA/DoRA adapters on it (student.path).
  c.method = "full"                           # full | lora | dora
  c.lora = config_dict.ConfigDict()
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.targets = "all-linear"
  c.lora.dropout = 0.0
  c.lora.rslora = False

  # Data: what the teacher stage reads and the online stage trains on.
  c.data = config_dict.ConfigDict()
  c.data.train = "data/trec6/train.jsonl"
  c.data.validation = ""                      # held-out eval (eval_kl needs teacher.path)
  c.data.format = "alpaca"                    # alpaca | chat | text
  c.data.template = ""        # "" = the Alpaca prompt for Alpaca rows, gemma for chat rows
  c.data.seq_len = 256
  c.data.packing = True                       # False for on-policy sampling
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  c.data.workers = 0
  c.data.on_bad_rows = "fail"                 # fail | skip

  # Teacher top-k store (offline): k ids (int32) + their probabilities and the tail (float16).
  c.store = config_dict.ConfigDict()
  c.store.dir = "runs/distill/store"          # "" = workdir/store
  c.store.k = 32
  c.store.sampling = "topk"                   # topk | gumbel (k ids sampled w/o replacement)
  c.store.num_shards = 4
  c.store.batch_size = 8                      # rows of seq_len per teacher forward

  # Loss: kd_ratio * t^2 * KD + (1 - kd_ratio) * CE, at temperature t.
  c.distill = config_dict.ConfigDict()
  c.distill.kd_ratio = 1.0
  c.distill.temperature = 1.0                 # offline: must equal the store's
  c.distill.divergence = "forward_kl"         # online: forward_kl | reverse_kl | jsd
  c.distill.beta = 0.5                        # JSD(beta); 0 = forward KL, 1 = reverse KL

  # On-policy (online stage): the share of batches whose responses the student samples.
  c.onpolicy = config_dict.ConfigDict()
  c.onpolicy.fraction = 0.0                   # lambda; > 0 needs data.packing = False
  c.onpolicy.max_new_tokens = 64
  c.onpolicy.temperature = 1.0
  c.onpolicy.top_k = 0                        # 0 = no top-k truncation
  c.onpolicy.min_prompt = 8                   # text data: tokens kept as the prompt

  # compare stage only: distilled vs CE-only students on the bundled model's corpus split.
  c.compare = config_dict.ConfigDict()
  c.compare.mode = "offline"                  # offline (top-k store) | online (teacher in loop)
  c.compare.corpus = "data/corpus/pretrain.txt"
  c.compare.chunk_chars = 800
  c.compare.holdout_every = 100
  c.compare.train_chunks = 0                  # 0 = every training chunk
  c.compare.heldout_chunks = 0                # 0 = every held-out chunk

  # Devices: a mesh over every device (ignored on one device); the teacher is sharded over it.
  c.mesh = config_dict.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  # Optimizer: AdamW, linear warmup + cosine decay, global-norm clipping.
  c.optimizer = config_dict.ConfigDict()
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.end_lr_fraction = 0.1
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 1.0
  c.optimizer.grad_accum = 1

  # Loop.
  c.steps = 500
  c.log_every = 10
  c.eval_every = 100
  c.eval_batches = 20                         # 0 = the whole validation set
  c.checkpoint_every = 100
  c.keep_checkpoints = 3
  c.save_student = True                       # workdir/student in HF format (adapters merged)
  c.progress = True
  c.workdir = "runs/distill/student"
  c.seed = 0
  return c
