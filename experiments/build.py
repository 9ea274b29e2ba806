"""What the scripts build from their config sections (experiments/schemas.py), in one place: the
device mesh, the model (loaded or randomly initialised, with LoRA/DoRA/NF4), the tokenizer, the data
pipelines, the optimizer and loop settings, and a finetune workdir read back as a model.

Config keys named like the library's arguments pass straight through (a `lora` section is
peft.apply's keywords, a `mesh` section make_mesh's, the loop keys TrainerConfig's fields), so a key
added to a schema reaches the library without a second list here. Callers check the config first.
"""

from __future__ import annotations

import dataclasses
import json
import os

from gemmax.errors import ConfigError, GemmaxError


def _fields(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)}


def mesh(section):
  """The device mesh of a mesh section, or None on a single device (nothing to shard)."""
  import jax
  from gemmax import sharding

  # Built (so checked against the device count) even on one device, where it is then unused.
  m = sharding.make_mesh(**section)
  return None if jax.device_count() == 1 else m


# --- model ----------------------------------------------------------------------------------------
def model(m, seed: int = 0, mesh=None, name: str = "model", **fields):
  """The model of a model section: `path` (HF dir, .gguf file or registry name) loaded, else
  `preset` randomly initialised from `seed`, with the section's `overrides` and `fields` as
  ModelConfig fields; created straight into its shards when `mesh` is given. `dtype` is the compute
  dtype, `param_dtype` the storage dtype ("" = the checkpoint's; float32 for a preset)."""
  from flax import nnx
  from gemmax.convert import load
  from gemmax.models import ModelConfig, Transformer, create_sharded

  run = {k: m[k] for k in ("remat", "attn_impl") if k in m}
  param_dtype = m.get("param_dtype") or None
  if m.get("path"):
    return load(m["path"], param_dtype, compute_dtype=m["dtype"] or None, mesh=mesh, **run)
  overrides = m["overrides"].to_dict() if "overrides" in m else {}
  settings = {"dtype": m["dtype"], "param_dtype": param_dtype or "float32", **run}
  try:
    cfg = ModelConfig.preset(m["preset"], **{**fields, **overrides, **settings})
  except TypeError as e:
    raise ConfigError(f"{name}.overrides: {e}") from None
  if mesh is not None:
    return create_sharded(cfg, mesh, seed)
  return Transformer(cfg, rngs=nnx.Rngs(seed))


def adapters(model, c, mesh=None):
  """LoRA/DoRA adapters by c.method (none for "full") with the c.lora keywords, over an NF4 base
  where c.quantize says so; the new arrays follow their base weights' shards on `mesh`."""
  from flax import nnx
  from gemmax import peft, sharding

  if c.method == "full":
    return model
  lora = c.lora.to_dict()
  if isinstance(lora["targets"], str) and "," in lora["targets"]:
    lora["targets"] = [s.strip() for s in lora["targets"].split(",") if s.strip()]
  peft.apply(
    model,
    method=c.method,
    quantize=c.get("quantize"),
    rngs=nnx.Rngs(params=c.seed, dropout=c.seed + 1),
    **lora,
  )
  if mesh is not None:
    sharding.shard_model(model, mesh)
  return model


def check_sources(c, files) -> None:
  """The model and the files a recipe names, before anything loads: exactly one of model.path
  and model.preset (a preset needs model.tokenizer), a path that is a checkpoint directory, a
  .gguf file or a registry name, and every (config key, path) of `files` that is set exists."""
  from gemmax import fetch

  if bool(c.model.path) == bool(c.model.preset):
    raise ConfigError("set exactly one of model.path and model.preset")
  if not (c.model.path or c.model.tokenizer):
    raise ConfigError("a preset model needs model.tokenizer")
  for name, path in files:
    if path and not os.path.exists(path):
      raise ConfigError(f"{name}: {path} does not exist")
  if c.model.path and not (os.path.exists(c.model.path) or fetch.is_registry_name(c.model.path)):
    raise ConfigError(
      f"model.path: {c.model.path} is neither a checkpoint directory, a .gguf "
      f"file nor a registry model ({', '.join(fetch.REGISTRY)})"
    )


def check_context(seq_len: int, model, who: str = "model", source: str = "") -> None:
  """data.seq_len must fit the model's positions (positions past them were never trained)."""
  limit = model.config.max_position_embeddings
  if seq_len > limit:
    raise ConfigError(
      f"data.seq_len {seq_len} is longer than the {who}'s max_position_embeddings {limit}"
      + (f" ({source})" if source else "")
    )


def tokenizer(path: str, vocab_size: int | None = None):
  """The tokenizer at `path`, checked against the model's vocabulary when `vocab_size` is given."""
  from gemmax import data

  tok = data.load_tokenizer(path)
  if vocab_size is not None:
    data.check_vocab(tok, vocab_size)
  return tok


# --- a finetune workdir as a model (evaluate.py, generate.py) -----------------------------------------
def is_workdir(path: str) -> bool:
  """A finetune workdir: its run config.json and an adapter/ written at the end of the run."""
  return os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(
    os.path.join(path, "adapter", "adapter_config.json")
  )


def resolve_adapter(adapter: str) -> tuple[str, dict]:
  """An adapter dir, or a finetune workdir holding `adapter/`; returns (dir, workdir config)."""
  run_cfg = {}
  if is_workdir(adapter):
    with open(os.path.join(adapter, "config.json"), encoding="utf-8") as f:
      try:
        run_cfg = json.load(f)
      except ValueError as e:
        raise GemmaxError(f"{adapter}/config.json: not valid JSON ({e})") from None
    adapter = os.path.join(adapter, "adapter")
  if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
    raise FileNotFoundError(
      f"{adapter}: no adapter_config.json (expected an HF PEFT adapter dir "
      f"or a finetune workdir with adapter/)"
    )
  return adapter, run_cfg


def trained_model(m):
  """(model, base source, the finetune run's config or {}) of a model section (schemas._MODEL):
  model.path is a registry name, HF dir, .gguf file or finetune workdir (its base + adapter);
  model.adapter an adapter dir or finetune workdir, whose base and quantize fill in those unset."""
  from gemmax.evals.loading import load_model

  path, adapter = m.path, m.adapter
  if path and not adapter and is_workdir(path):
    path, adapter = "", path
  run_cfg = {}
  if adapter:
    adapter, run_cfg = resolve_adapter(adapter)
  path = path or run_cfg.get("model", {}).get("path", "")
  if not path:
    raise GemmaxError("model.path is empty and no adapter workdir names a base model")
  quantize = m.quantize or run_cfg.get("quantize") or ""
  return load_model(path, adapter, m.dtype, quantize), path, run_cfg


# --- data -----------------------------------------------------------------------------------------
_DATA_KEYS = {  # data section key -> DataConfig field
  "seq_len": "seq_len",
  "batch_size": "batch_size",
  "packing": "packing",
  "workers": "worker_count",
  "on_bad_rows": "on_bad_rows",
}


def data_config(d, seed: int = 0, evaluation: bool = False):
  """The DataConfig of a data section: training batches (shuffled by `seed`, repeating), or the
  held-out ones (eval_batch_size rows, one ordered pass, read in this process)."""
  from gemmax import data

  kw = {field: d[key] for key, field in _DATA_KEYS.items() if key in d}
  if not evaluation:
    return data.DataConfig(seed=seed, **kw)
  kw.update(batch_size=d.get("eval_batch_size", d["batch_size"]), worker_count=0)
  return data.DataConfig(shuffle=False, num_epochs=1, prefetch=0, **kw)


def source(d, path: str):
  """The SourceSpec of `path` read as the data section says (text rows where it says nothing).
  The template stays as given ("" is not None): a teacher store's dataset fingerprint hashes it."""
  from gemmax import data

  return data.SourceSpec(path, kind=d.get("format", "text"), template=d.get("template"))


def batches(d, tok, path: str, seed: int = 0):
  """The training batch iterator over `path`."""
  from gemmax import data

  return data.make_pipeline(source(d, path), tok, data_config(d, seed))


def eval_batches(d, tok, path: str):
  """A factory of held-out batch iterators over `path` (read and checked now), or None for ""."""
  from gemmax import data

  if not path:
    return None
  return data.make_eval_pipeline(source(d, path), tok, data_config(d, evaluation=True))


# --- optimizer and loop ---------------------------------------------------------------------------
def optimizer(c):
  """OptimizerConfig from the optimizer section (clip_norm 0 = no clipping) and c.steps."""
  from gemmax.train import OptimizerConfig

  o = c.optimizer
  kw = {k: o[k] for k in o.keys() if k in _fields(OptimizerConfig)}
  return OptimizerConfig(**{**kw, "steps": c.steps, "clip_norm": o.clip_norm or None})


def loop(c, evaluate: bool = True, **settings):
  """TrainerConfig from the config's top-level loop keys (steps, log_every, eval_every, seed,
  workdir, ...) and optimizer.grad_accum (no evaluation without held-out data); `settings` set the
  rest or override."""
  from gemmax.train import TrainerConfig

  kw = {k: c[k] for k in c.keys() if k in _fields(TrainerConfig)}
  kw["accum_steps"] = c.optimizer.get("grad_accum", 1)
  kw["eval_every"] = kw.get("eval_every", 0) if evaluate else 0
  return TrainerConfig(**{**kw, **settings})
