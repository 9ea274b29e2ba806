"""The config schema of each script: every key, its default, type, range, and whether a resumed
run may change it (gemmax.schema). Recipes in configs/ start from `defaults(...)` and override
values; the scripts check a config against the same schema before any work.
"""

from __future__ import annotations

import dataclasses

from ml_collections import config_dict

from gemmax.errors import ConfigError
from gemmax.ops.attention import IMPLS
from gemmax.schema import Key, above, at_least, between, nonempty, one_of
from gemmax.distill.chunked import RULES as KD
from gemmax.train.grpo import RULES as GR
from gemmax.train.optimizer import RULES as OPT
from gemmax.train.trainer import RULES as LOOP

DTYPES = one_of("float32", "bfloat16", "float16")
MESH_SIZE = (lambda x: x == -1 or x >= 1), "-1 or >= 1"
# Keys that may differ when resuming are marked R: they do not change the trained weights.
R = dict(resume=True)


def _with(section: dict, **new_defaults) -> dict:
  """A section with some defaults changed (types, ranges and resume rules kept)."""
  unknown = set(new_defaults) - set(section)
  if unknown:
    raise KeyError(f"no such keys: {sorted(unknown)}")
  return {
    k: dataclasses.replace(v, default=new_defaults[k]) if k in new_defaults else v
    for k, v in section.items()
  }


# Data: JSONL/CSV/Parquet files, the example format, sequence packing.
_DATA = {
  "train": Key("data/trec6/train.jsonl", str, nonempty()),
  "validation": Key("data/trec6/validation.jsonl", str, **R),  # "" = no evaluation
  "format": Key("alpaca", str, one_of("alpaca", "chat", "text")),
  "template": Key("", str),  # "" = by format | alpaca | gemma | llama3 | model | <jinja>
  "seq_len": Key(512, int, at_least(2)),
  "packing": Key(True, bool),
  "batch_size": Key(8, int, above(0)),  # sequences per optimizer step
  "eval_batch_size": Key(8, int, above(0), **R),
  "workers": Key(0, int, at_least(0), **R),  # grain worker processes
  "on_bad_rows": Key("fail", str, one_of("fail", "skip")),
}
_LORA = {
  "rank": Key(16, int, above(0)),
  "alpha": Key(32.0, float, above(0)),
  "targets": Key("all-linear", (str, list, tuple), nonempty()),  # names or a regex
  "dropout": Key(0.05, float, between(0, 1, high_open=True)),
  "rslora": Key(False, bool),
}
# AdamW, linear warmup + cosine decay, global-norm clipping; ranges of the fields it feeds from
# the library (OptimizerConfig, TrainerConfig), which checks them by the same rules.
_OPTIMIZER = {
  "learning_rate": Key(2e-4, float, OPT["learning_rate"]),
  "warmup_steps": Key(20, int, OPT["warmup_steps"]),
  "end_lr_fraction": Key(0.1, float, OPT["end_lr_fraction"]),
  "b1": Key(0.9, float, OPT["b1"]),
  "b2": Key(0.95, float, OPT["b2"]),
  "weight_decay": Key(0.0, float, OPT["weight_decay"]),
  "clip_norm": Key(1.0, float, at_least(0)),  # 0 = no clipping
  "grad_accum": Key(1, int, LOOP["accum_steps"]),  # micro-batches per step
}
# A mesh over every device of every process (ignored on one device); -1 = the rest.
_MESH = {
  "data": Key(-1, int, MESH_SIZE, **R),
  "fsdp": Key(1, int, MESH_SIZE, **R),
  "tensor": Key(1, int, MESH_SIZE, **R),
}
# The loop's cadence (all may change on resume).
_LOOP = {
  "steps": Key(500, int, LOOP["steps"]),
  "log_every": Key(10, int, LOOP["log_every"], **R),
  "eval_every": Key(100, int, LOOP["eval_every"], **R),
  "eval_batches": Key(20, int, LOOP["eval_batches"], **R),  # 0 = the whole validation set
  "checkpoint_every": Key(100, int, LOOP["checkpoint_every"], **R),
  "keep_checkpoints": Key(3, int, LOOP["keep_checkpoints"], **R),
  "progress": Key(True, bool, **R),
  "seed": Key(0, int),
}

FINETUNE = {
  # Model: an HF directory, a .gguf file or a registry name; or a preset, randomly initialised.
  "model": {
    "path": Key("checkpoints/gemmax-tiny", str),  # "" = model.preset
    "preset": Key("", str),  # e.g. "gemma2-tiny" when path is ""
    "tokenizer": Key("", str),  # tokenizer file or dir; "" = model.path
    "dtype": Key("bfloat16", str, DTYPES),  # compute dtype
    "param_dtype": Key("", str, one_of("", "float32", "bfloat16", "float16")),  # "" = stored
    "remat": Key("none", str, one_of("none", "full", "save_dots")),
    "attn_impl": Key("auto", str, one_of(*IMPLS)),
  },
  "data": _DATA,
  # Method: full fine-tuning or an adapter, optionally over a 4-bit NF4 base (QLoRA / QDoRA).
  "method": Key("lora", str, one_of("full", "lora", "dora")),
  "quantize": Key(None, str, one_of("nf4"), optional=True),
  "lora": _LORA,
  "optimizer": _OPTIMIZER,
  # Classification before/after training by label likelihood on Alpaca rows whose output is
  # the class, with the training file's majority class as the baseline.
  "classify": {
    "file": Key("", str, **R),  # "" = skip
    "limit": Key(0, int, at_least(0), **R),  # 0 = every row
    "reduction": Key("mean", str, one_of("mean", "sum"), **R),
    "generate": Key(False, bool, **R),  # also answer by greedy generation
  },
  # Export at the end: adapters merged, as workdir/model-<type>.gguf.
  "export": {"gguf": Key("", str, one_of("", "f32", "f16", "bf16", "q8_0"), **R)},
  "mesh": _MESH,
  "multihost": Key(False, bool, **R),  # jax.distributed.initialize() first
  **_LOOP,
  "save_merged": Key(False, bool, **R),  # also the merged model in HF format
  "halt_on_nonfinite": Key(False, bool, **R),  # NaN/Inf loss or grads: False skips the step
  "workdir": Key("runs/finetune", str, nonempty(), **R),
}

# experiments/distill.py: stages teacher (write the top-k store), student (train on it), online
# (teacher in the loop, optionally on-policy) and compare (distilled vs CE-only students).
DISTILL = {
  "stage": Key("student", str, one_of("teacher", "student", "online", "compare")),
  # Teacher: an HF checkpoint directory (its tokenizer is the student's unless set otherwise).
  "teacher": {
    "path": Key("checkpoints/gemmax-tiny", str),
    "dtype": Key("float32", str, one_of("", "float32", "bfloat16", "float16")),
  },
  # Student: an HF dir, or a preset (random init, the teacher's vocabulary and special ids)
  # with ModelConfig overrides (checked when the student is built).
  "student": {
    "path": Key("", str),
    "preset": Key("gemma2-tiny", str),
    "overrides": Key(
      dict(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        sliding_window=128,
        query_pre_attn_scalar=32,
        max_position_embeddings=2048,
      ),
      config_dict.ConfigDict,
    ),
    "tokenizer": Key("", str),  # "" = student.path, else the teacher's
    "dtype": Key("float32", str, DTYPES),
    "param_dtype": Key("", str, one_of("", "float32", "bfloat16", "float16")),
    "remat": Key("none", str, one_of("none", "full", "save_dots")),
  },
  "method": Key("full", str, one_of("full", "lora", "dora")),
  "lora": _with(_LORA, dropout=0.0),
  # what the teacher stage reads and the online stage trains on ("" for the student stage)
  "data": {**_with(_DATA, validation="", seq_len=256), "train": Key("data/trec6/train.jsonl", str)},
  # Teacher top-k store (offline): k ids (int32) + their probabilities and the tail (float16).
  "store": {
    "dir": Key("runs/distill/store", str),  # "" = workdir/store
    "k": Key(32, int, above(0)),
    "sampling": Key("topk", str, one_of("topk", "gumbel")),
    "num_shards": Key(4, int, above(0)),
    "batch_size": Key(8, int, above(0), **R),  # rows of seq_len per teacher forward
  },
  # Loss: kd_ratio * t^2 * KD + (1 - kd_ratio) * CE, at temperature t.
  "distill": {
    "kd_ratio": Key(1.0, float, KD["kd_ratio"]),
    "temperature": Key(1.0, float, KD["temperature"]),  # offline: must equal the store's
    "divergence": Key("forward_kl", str, KD["divergence"]),
    "beta": Key(0.5, float, KD["beta"]),  # JSD(beta): 0 forward, 1 reverse KL
  },
  # On-policy (online stage): the share of batches whose responses the student samples.
  "onpolicy": {
    "fraction": Key(0.0, float, between(0, 1)),  # > 0 needs data.packing = False
    "max_new_tokens": Key(64, int, above(0)),
    "temperature": Key(1.0, float, at_least(0)),
    "top_k": Key(0, int, at_least(0)),  # 0 = no truncation
    "min_prompt": Key(8, int, above(0)),  # text data: tokens kept as the prompt
  },
  # compare stage only: distilled vs CE-only students on the bundled model's corpus split.
  "compare": {
    "mode": Key("offline", str, one_of("offline", "online")),
    "corpus": Key("gutenberg-shakespeare", str, nonempty()),  # a file, or a corpus name
    "chunk_chars": Key(800, int, above(0)),
    "holdout_every": Key(100, int, at_least(2)),
    "train_chunks": Key(0, int, at_least(0)),  # 0 = every training chunk
    "heldout_chunks": Key(0, int, at_least(0)),  # 0 = every held-out chunk
  },
  "mesh": _MESH,
  "optimizer": _with(_OPTIMIZER, learning_rate=1e-3),
  **_LOOP,
  "save_student": Key(True, bool, **R),  # workdir/student in HF format (adapters merged)
  "workdir": Key("runs/distill/student", str, **R),
}

# A model to evaluate or chat with: registry name, HF dir, .gguf file or finetune workdir.
_MODEL = {
  "path": Key("smollm2-135m-instruct", str),  # "" = the base of model.adapter's workdir
  "tokenizer": Key("", str),  # "" = model.path
  "adapter": Key("", str),  # finetune workdir or HF PEFT adapter dir
  "quantize": Key("", str, one_of("", "nf4")),  # a workdir's own setting is used if set
  "dtype": Key("float32", str, DTYPES),  # compute dtype
}


def check_model_source(c) -> None:
  """A model to load: model.path, or a finetune workdir as model.adapter (its base)."""
  if not c.model.path and not c.model.adapter:
    raise ConfigError("model.path is empty and model.adapter names no finetune workdir")


EVALUATE = {
  "model": _MODEL,
  "tasks": Key("classification,perplexity", str, nonempty()),  # comma list of the tasks
  "workdir": Key("runs/eval", str, nonempty()),  # eval_report.json, confusion_matrix.png
  "batch_size": Key(8, int, above(0)),
  "progress": Key(True, bool),
  # Rows: Alpaca JSONL (output = the class) or text/label JSONL.
  "classification": {
    "file": Key("data/trec6/validation.jsonl", str),
    "format": Key("alpaca", str, one_of("alpaca", "text_label")),
    "prompt": Key("", str),  # alpaca rows: "" = as the run trained | alpaca | gemma | ...
    "template": Key("{text}", str),  # prompt template (text_label format)
    "label_template": Key("{label}", str),  # how a class is written after the prompt
    "classes": Key("", str),  # comma list; "" = the sorted gold labels
    "reduction": Key("mean", str, one_of("mean", "sum")),
    "few_shot": Key(0, int, at_least(0)),  # examples prepended to each prompt
    "few_shot_file": Key("", str),  # "" = train.jsonl beside classification.file
    "limit": Key(0, int, at_least(0)),  # 0 = all rows
  },
  "perplexity": {
    "file": Key("data/pretrain_sample.txt", str),
    "window": Key(256, int, at_least(2)),  # at most the model's max_position_embeddings
    "stride": Key(0, int, at_least(0)),  # 0 = window // 2
    "max_chars": Key(200_000, int, at_least(0)),  # 0 = the whole file
  },
  "exact_match": {
    "file": Key("data/trec6/validation.jsonl", str),  # Alpaca JSONL; output is the reference
    "max_new_tokens": Key(8, int, above(0)),
    "limit": Key(64, int, at_least(0)),
  },
}

GENERATE = {
  "model": _MODEL,
  "prompt": Key("", str),  # one-shot mode when set; interactive chat otherwise
  "chat_template": Key("", str),  # "" = the model's own, else by family | gemma | llama3 | none
  "system": Key("", str),  # optional system message
  "max_new_tokens": Key(256, int, above(0)),
  "max_len": Key(2048, int, at_least(2)),  # KV cache length, at most the model's context
  "temperature": Key(0.7, float, at_least(0)),  # 0 = greedy
  "top_k": Key(64, int, at_least(0)),  # 0 = off
  "top_p": Key(0.95, float, between(0, 1, low_open=True)),  # 1.0 = off
  "seed": Key(0, int),
}

# experiments/pretrain.py: the bundled model checkpoints/gemmax-tiny from a random init.
PRETRAIN = {
  # Architecture (ModelConfig fields): every Gemma 2 mechanism at a size a CPU trains.
  "model": {
    "family": Key("gemma2", str, one_of("gemma2", "gemma3", "llama")),
    "vocab_size": Key(8192, int, above(0)),  # = the tokenizer's
    "hidden_size": Key(256, int, above(0)),
    "intermediate_size": Key(768, int, above(0)),
    "num_hidden_layers": Key(4, int, above(0)),
    "num_attention_heads": Key(4, int, above(0)),
    "num_key_value_heads": Key(2, int, above(0)),
    "head_dim": Key(64, int, above(0)),
    "sliding_window": Key(128, int, above(0)),  # local layers see this many keys
    "query_pre_attn_scalar": Key(64, float, above(0)),
    "attn_logit_softcapping": Key(50.0, float, above(0)),
    "final_logit_softcapping": Key(30.0, float, above(0)),
    "max_position_embeddings": Key(2048, int, above(0)),
    "rope_theta": Key(10000.0, float, above(0)),
    "tokenizer": Key("checkpoints/gemmax-tiny/tokenizer.model", str, nonempty()),
    "dtype": Key("float32", str, DTYPES),  # compute dtype
  },
  # The corpus cut into chunk_chars pieces plus TREC-6 train questions, packed into rows;
  # every holdout_every-th chunk is held out for perplexity and never trained on.
  "data": {
    # A text file, or a pinned corpus built on first use (gemmax.data.corpus).
    "corpus": Key("gutenberg-shakespeare", str, nonempty()),
    "trec_train": Key("data/trec6/train.jsonl", str),
    "trec_repeats": Key(2, int, at_least(0)),
    "chunk_chars": Key(800, int, above(0)),
    "holdout_every": Key(100, int, at_least(2)),
    "heldout_chars": Key(60_000, int, above(0)),
    "seq_len": Key(256, int, at_least(2)),
    "batch_size": Key(8, int, above(0)),
  },
  "optimizer": {
    k: v
    for k, v in _with(_OPTIMIZER, learning_rate=3e-3, warmup_steps=50, weight_decay=0.1).items()
    if k != "grad_accum"
  },
  "steps": Key(1600, int, LOOP["steps"]),
  "log_every": Key(10, int, LOOP["log_every"]),
  "eval_every": Key(400, int, LOOP["eval_every"]),
  "eval_batches": Key(8, int, LOOP["eval_batches"]),
  "progress": Key(True, bool),
  "seed": Key(0, int),
  "workdir": Key("runs/pretrain", str, nonempty()),
  "output": Key("checkpoints/gemmax-tiny", str, nonempty()),  # HF checkpoint + model card
  "save_dtype": Key("float32", str, DTYPES),
}

# experiments/best_of_n.py: rejection sampling (Llama 2's first RLHF stage) -- n samples per
# prompt, the best by reward kept as SFT rows that finetune.py trains on.
BEST_OF_N = {
  "model": _MODEL,
  "data": {
    "file": Key("data/trec6/train.jsonl", str, nonempty()),  # Alpaca rows (JSONL/Parquet/CSV)
    "template": Key("model", str),  # how prompts are put: alpaca | gemma | llama3 | model | jinja
    "limit": Key(0, int, at_least(0)),  # 0 = every row
  },
  "rewards": Key("gemmax.evals.rewards:first_word_match", str, nonempty()),  # comma-separated
  "weights": Key("", str),  # comma-separated floats, one per reward; "" = 1 each
  "n": Key(4, int, above(0)),  # samples per prompt
  "max_new_tokens": Key(16, int, above(0)),
  "temperature": Key(1.0, float, above(0)),
  "top_p": Key(1.0, float, between(0, 1, low_open=True)),  # 1.0 = off
  "top_k": Key(0, int, at_least(0)),  # 0 = off
  "min_reward": Key(1.0, float),  # keep a prompt's best only at or above this total
  "batch_prompts": Key(8, int, above(0)),  # prompts per sampler call (x n rows)
  "seed": Key(0, int),
  "progress": Key(True, bool),
  "workdir": Key("runs/best_of_n", str, nonempty()),  # writes sft.jsonl and stats.json
}

# experiments/dpo.py: direct preference optimisation on {prompt, chosen, rejected} pairs, the
# reference being the model with its adapters off (lora/dora) or a frozen copy (full).
from gemmax.train.dpo import RULES as DPO_RULES  # noqa: E402

DPO = {
  "model": FINETUNE["model"],
  # Pairs: JSONL/Parquet/CSV rows {prompt, chosen, rejected} (strings or chat message lists).
  "data": {
    "train": Key("data/trec6/pairs_train.jsonl", str, nonempty()),
    "validation": Key("data/trec6/pairs_test.jsonl", str, **R),  # "" = no evaluation
    **{k: _DATA[k] for k in ("template", "on_bad_rows")},
    "seq_len": Key(256, int, at_least(2)),  # prompt + completion; longer pairs lose their end
    "batch_size": Key(8, int, above(0)),  # pairs per optimizer step
    "eval_batch_size": Key(16, int, above(0), **R),  # pairs per evaluation batch
  },
  "method": FINETUNE["method"],
  "quantize": FINETUNE["quantize"],
  "lora": _with(_LORA, dropout=0.0),
  # The loss (gemmax.train.dpo.dpo_loss): beta anchors the policy to the reference.
  "dpo": {
    "beta": Key(0.1, float, DPO_RULES["beta"]),
    "loss_type": Key("sigmoid", str, DPO_RULES["loss_type"]),
    "label_smoothing": Key(0.0, float, DPO_RULES["label_smoothing"]),  # sigmoid / robust only
  },
  "optimizer": _with(_OPTIMIZER, learning_rate=5e-4, warmup_steps=5),
  "mesh": _MESH,
  **_with(_LOOP, steps=100, eval_every=0),
  "eval_before": Key(True, bool, **R),  # held-out preference scores of the untrained model too
  "save_merged": FINETUNE["save_merged"],
  "halt_on_nonfinite": FINETUNE["halt_on_nonfinite"],
  "workdir": Key("runs/dpo", str, nonempty(), **R),
}

# experiments/grpo.py: GRPO with verifiable rewards (gemmax.train.grpo, gemmax.posttrain).
GRPO = {
  "model": FINETUNE["model"],
  # Prompts: Alpaca rows (output = the reference answer the rewards see) or chat rows ending
  # with the assistant's reference answer, rendered as training renders them.
  "data": {
    "train": Key("data/trec6/train.jsonl", str, nonempty()),
    "format": Key("alpaca", str, one_of("alpaca", "chat")),
    "template": Key("", str),  # "" = by format | alpaca | gemma | llama3 | model | <jinja>
    "limit": Key(0, int, at_least(0)),  # 0 = every row
  },
  # Reward functions "module:function" (a list or a comma-separated string), called with
  # (prompt, completion, row); weights: one per function ("" = 1 each).
  "rewards": {
    "functions": Key("gemmax.evals.rewards:exact_match", (str, list, tuple), nonempty()),
    "weights": Key("", (str, list, tuple)),
  },
  "num_generations": Key(8, int, above(0)),  # G completions per prompt (>= 2)
  "prompts_per_step": Key(4, int, above(0)),  # P: the batch is P x G completions
  "temperature": Key(1.0, float, above(0)),
  "top_p": Key(1.0, float, between(0, 1, low_open=True)),  # 1.0 = off
  "top_k": Key(0, int, at_least(0)),  # 0 = off
  "max_completion_length": Key(64, int, GR["max_completion_length"]),
  "grpo": {
    "beta": Key(0.04, float, GR["beta"]),  # > 0 needs method lora or dora
    "epsilon": Key(0.2, float, GR["epsilon"]),
    "epsilon_high": Key(None, float, GR["epsilon_high"], optional=True),  # None = eps
    "loss_type": Key("grpo", str, GR["loss_type"]),
    "scale_rewards": Key("group", str, GR["scale_rewards"]),
  },
  "method": Key("lora", str, one_of("full", "lora", "dora")),
  "lora": _with(_LORA, dropout=0.0),
  "optimizer": _with(_OPTIMIZER, learning_rate=1e-4, warmup_steps=0),
  # Greedy answers' exact match on held-out Alpaca rows before and after training ("" = skip).
  "evaluate": {
    "file": Key("", str, **R),
    "limit": Key(64, int, at_least(0), **R),  # 0 = every row
    "max_new_tokens": Key(8, int, above(0), **R),
    "batch_size": Key(16, int, above(0), **R),
  },
  "mesh": _MESH,
  **_LOOP,
  "halt_on_nonfinite": Key(False, bool, **R),
  "workdir": Key("runs/grpo", str, nonempty(), **R),
}
