"""The config schema of each script: every key, its default, type, range, and whether a resumed
run may change it (gemmax.schema). Recipes in configs/ start from `defaults(...)` and override
values; the scripts check a config against the same schema before any work.
"""
from __future__ import annotations

from gemmax.ops.attention import IMPLS
from gemmax.errors import ConfigError
from gemmax.schema import Key, above, at_least, between, nonempty, one_of

DTYPES = one_of("float32", "bfloat16", "float16")
MESH_SIZE = (lambda x: x == -1 or x >= 1), "-1 or >= 1"
# Keys that may differ when resuming are marked R: they do not change the trained weights.
R = dict(resume=True)

FINETUNE = {
    # Model: an HF directory, a .gguf file or a registry name; or a preset, randomly initialised.
    "model": {
        "path": Key("checkpoints/gemmax-tiny", str),   # "" = model.preset
        "preset": Key("", str),                       # e.g. "gemma2-tiny" when path is ""
        "tokenizer": Key("", str),                    # tokenizer file or dir; "" = model.path
        "dtype": Key("bfloat16", str, DTYPES),        # compute dtype
        "param_dtype": Key("", str, one_of("", "float32", "bfloat16", "float16")),  # "" = stored
        "remat": Key("none", str, one_of("none", "full", "save_dots")),
        "attn_impl": Key("auto", str, one_of(*IMPLS)),
    },
    # Data: JSONL/CSV/Parquet files, the example format, sequence packing.
    "data": {
        "train": Key("data/trec6/train.jsonl", str, nonempty()),
        "validation": Key("data/trec6/validation.jsonl", str, **R),  # "" = no evaluation
        "format": Key("alpaca", str, one_of("alpaca", "chat", "text")),
        "template": Key("", str),  # "" = by format | alpaca | gemma | llama3 | model | <jinja>
        "seq_len": Key(512, int, at_least(2)),
        "packing": Key(True, bool),
        "batch_size": Key(8, int, above(0)),          # sequences per optimizer step
        "eval_batch_size": Key(8, int, above(0), **R),
        "workers": Key(0, int, at_least(0), **R),     # grain worker processes
        "on_bad_rows": Key("fail", str, one_of("fail", "skip")),
    },
    # Method: full fine-tuning or an adapter, optionally over a 4-bit NF4 base (QLoRA / QDoRA).
    "method": Key("lora", str, one_of("full", "lora", "dora")),
    "quantize": Key(None, str, one_of("nf4"), optional=True),
    "lora": {
        "rank": Key(16, int, above(0)),
        "alpha": Key(32.0, float, above(0)),
        "targets": Key("all-linear", (str, list, tuple), nonempty()),  # names or a regex
        "dropout": Key(0.05, float, between(0, 1, high_open=True)),
        "rslora": Key(False, bool),
    },
    # Optimizer: AdamW, linear warmup + cosine decay, global-norm clipping.
    "optimizer": {
        "learning_rate": Key(2e-4, float, above(0)),
        "warmup_steps": Key(20, int, at_least(0)),
        "end_lr_fraction": Key(0.1, float, between(0, 1)),
        "b1": Key(0.9, float, between(0, 1, high_open=True)),
        "b2": Key(0.95, float, between(0, 1, high_open=True)),
        "weight_decay": Key(0.0, float, at_least(0)),
        "clip_norm": Key(1.0, float, at_least(0)),   # 0 = no clipping
        "grad_accum": Key(1, int, above(0)),         # micro-batches per step
    },
    # Classification before/after training by label likelihood on Alpaca rows whose output is
    # the class, with the training file's majority class as the baseline.
    "classify": {
        "file": Key("", str, **R),                   # "" = skip
        "limit": Key(0, int, at_least(0), **R),      # 0 = every row
        "reduction": Key("mean", str, one_of("mean", "sum"), **R),
        "generate": Key(False, bool, **R),           # also answer by greedy generation
    },
    # Export at the end: adapters merged, as workdir/model-<type>.gguf.
    "export": {"gguf": Key("", str, one_of("", "f32", "f16", "bf16", "q8_0"), **R)},
    # Devices: a mesh over every device of every process (ignored on one device); -1 = the rest.
    "mesh": {"data": Key(-1, int, MESH_SIZE, **R), "fsdp": Key(1, int, MESH_SIZE, **R),
             "tensor": Key(1, int, MESH_SIZE, **R)},
    "multihost": Key(False, bool, **R),             # jax.distributed.initialize() first
    # Loop.
    "steps": Key(500, int, above(0)),
    "log_every": Key(10, int, above(0), **R),
    "eval_every": Key(100, int, at_least(0), **R),
    "eval_batches": Key(20, int, at_least(0), **R),  # 0 = the whole validation set
    "checkpoint_every": Key(100, int, at_least(0), **R),
    "keep_checkpoints": Key(3, int, above(0), **R),
    "save_merged": Key(False, bool, **R),           # also the merged model in HF format
    "progress": Key(True, bool, **R),
    "halt_on_nonfinite": Key(False, bool, **R),     # NaN/Inf loss or grads: False skips the step
    "workdir": Key("runs/finetune", str, nonempty(), **R),
    "seed": Key(0, int),
}

# A model to evaluate or chat with: registry name, HF dir, .gguf file or finetune workdir.
_MODEL = {
    "path": Key("smollm2-135m-instruct", str),     # "" = the base of model.adapter's workdir
    "tokenizer": Key("", str),                      # "" = model.path
    "adapter": Key("", str),                        # finetune workdir or HF PEFT adapter dir
    "quantize": Key("", str, one_of("", "nf4")),    # a workdir's own setting is used if set
    "dtype": Key("float32", str, DTYPES),           # compute dtype
}

def check_model_source(c) -> None:
  """A model to load: model.path, or a finetune workdir as model.adapter (its base)."""
  if not c.model.path and not c.model.adapter:
    raise ConfigError("model.path is empty and model.adapter names no finetune workdir")


EVALUATE = {
    "model": _MODEL,
    "tasks": Key("classification,perplexity", str, nonempty()),  # comma list of the tasks
    "workdir": Key("runs/eval", str, nonempty()),   # eval_report.json, confusion_matrix.png
    "batch_size": Key(8, int, above(0)),
    "progress": Key(True, bool),
    # Rows: Alpaca JSONL (output = the class) or text/label JSONL.
    "classification": {
        "file": Key("data/trec6/validation.jsonl", str),
        "format": Key("alpaca", str, one_of("alpaca", "text_label")),
        "prompt": Key("", str),  # alpaca rows: "" = as the run trained | alpaca | gemma | ...
        "template": Key("{text}", str),            # prompt template (text_label format)
        "label_template": Key("{label}", str),     # how a class is written after the prompt
        "classes": Key("", str),                   # comma list; "" = the sorted gold labels
        "reduction": Key("mean", str, one_of("mean", "sum")),
        "few_shot": Key(0, int, at_least(0)),      # examples prepended to each prompt
        "few_shot_file": Key("", str),             # "" = train.jsonl beside classification.file
        "limit": Key(0, int, at_least(0)),         # 0 = all rows
    },
    "perplexity": {
        "file": Key("data/pretrain_sample.txt", str),
        "window": Key(256, int, at_least(2)),      # at most the model's max_position_embeddings
        "stride": Key(0, int, at_least(0)),        # 0 = window // 2
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
    "prompt": Key("", str),          # one-shot mode when set; interactive chat otherwise
    "chat_template": Key("", str),   # "" = the model's own, else by family | gemma | llama3 | none
    "system": Key("", str),          # optional system message
    "max_new_tokens": Key(256, int, above(0)),
    "max_len": Key(2048, int, at_least(2)),  # KV cache length, at most the model's context
    "temperature": Key(0.7, float, at_least(0)),  # 0 = greedy
    "top_k": Key(64, int, at_least(0)),           # 0 = off
    "top_p": Key(0.95, float, between(0, 1, low_open=True)),  # 1.0 = off
    "seed": Key(0, int),
}
