"""Tiny inputs for experiments/finetune.py tests: an HF-format model dir with a BPE tokenizer, and
Alpaca JSONL data. Also runs the CLI's main in this process (no ~5 s JAX import per case)."""

import contextlib
import io
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "finetune_lora.py")

ROWS = [
  {"instruction": "Name the colour of the sky.", "input": "", "output": "blue"},
  {"instruction": "Add the numbers.", "input": "two and three", "output": "five"},
  {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
  {"instruction": "Give the opposite.", "input": "hot", "output": "cold"},
  {"instruction": "Name the colour of grass.", "input": "", "output": "green"},
  {"instruction": "Give the opposite.", "input": "up", "output": "down"},
]


def write_tokenizer(path, texts, vocab_size=500):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
  tok.train_from_iterator(
    texts,
    trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ),
  )
  tok.save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}, f)


def make_assets(d):
  """d/model (2-layer gemma2-tiny, vocab 512, + tokenizer), d/train.jsonl. Returns d."""
  from flax import nnx
  from gemmax.convert import save_hf
  from gemmax.data import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT
  from gemmax.models import ModelConfig, Transformer

  cfg = ModelConfig.preset("gemma2-tiny", num_hidden_layers=2, vocab_size=512)
  save_hf(Transformer(cfg, rngs=nnx.Rngs(0)), os.path.join(d, "model"))
  texts = [" ".join(r.values()) for r in ROWS] + [ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT]
  write_tokenizer(os.path.join(d, "model"), texts * 4)
  with open(os.path.join(d, "train.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in ROWS * 4)
  return d


def base_values(d, workdir, **overrides):
  """Dotted config key -> value for a 2-step float32 LoRA run on the assets in `d`
  (overrides: key with "__" for ".", e.g. lora__rank=2)."""
  args = {
    "model.path": os.path.join(d, "model"),
    "data.train": os.path.join(d, "train.jsonl"),
    "data.validation": "",
    "workdir": workdir,
    "model.dtype": "float32",
    "data.seq_len": 64,
    "data.batch_size": 2,
    "steps": 2,
    "log_every": 1,
    "checkpoint_every": 0,
    "optimizer.warmup_steps": 1,
    "lora.rank": 4,
    "lora.dropout": 0.0,
    "progress": False,
    "eval_every": 0,
  }
  args.update({k.replace("__", "."): v for k, v in overrides.items()})
  return args


def base_args(d, workdir, **overrides):
  """finetune.py arguments for `base_values`."""
  args = base_values(d, workdir, **overrides)
  return [f"--config={CONFIG}"] + [f"--config.{k}={v}" for k, v in args.items()]


def run_config(d, workdir, **overrides) -> dict:
  """The config.json a run with `base_values` writes into its workdir."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("_finetune_lora", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.update_from_flattened_dict(base_values(d, workdir, **overrides))
  return json.loads(c.to_json_best_effort())


def invoke(main, argv, name="finetune.py"):
  """Runs an absl script's `main` under gemmax.cli as `python <name> *argv` would, in this
  process. Returns (exit status, stderr text, stdout text)."""
  from absl import flags
  from gemmax import cli

  fv = flags.FLAGS
  fv.unparse_flags()
  for flag in [n for n in fv if n.startswith("config.")]:  # overrides are defined per parse
    delattr(fv, flag)
  saved, sys.argv = sys.argv, [name, *argv]
  err, out, status = io.StringIO(), io.StringIO(), 0
  try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
      rest = cli.parse_flags(sys.argv, name)
      cli.guard(main, name)(rest)
  except SystemExit as e:
    status = e.code
  finally:
    sys.argv = saved
    fv.unparse_flags()
  return status, err.getvalue(), out.getvalue()
