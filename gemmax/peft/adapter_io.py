"""Adapters on disk in the HF PEFT format: adapter_config.json + adapter_model.safetensors.

Tensor names are peft's: base_model.model.<hf module>.lora_A.weight [r, in],
.lora_B.weight [out, r] and, for DoRA, .lora_magnitude_vector [out] (no ".weight" suffix).
The config's "gemmax" block holds a fingerprint of the base architecture, so an adapter made
for another base model is refused with the differing fields named.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from gemmax.io.safetensors import SafetensorsFile, save_file
from gemmax.errors import GemmaxError
from gemmax.peft.apply import apply
from gemmax.peft.lora import LoRALinear, has_adapters
from gemmax.quant.nf4 import NF4Linear
from gemmax.peft.targets import (
  compact_targets,
  gemmax_module_name,
  get_module,
  hf_module_name,
  iter_modules,
  linear_types,
)

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_ARCH_FIELDS = (
  "family",
  "vocab_size",
  "hidden_size",
  "intermediate_size",
  "num_hidden_layers",
  "num_attention_heads",
  "num_key_value_heads",
  "head_dim",
  "tie_word_embeddings",
  "rope_theta",
  "rms_norm_eps",
  "sliding_window",
  "query_pre_attn_scalar",
  "hidden_activation",
)


def base_architecture(config) -> dict:
  """The fields of a ModelConfig that decide whether an adapter fits a base model."""
  return {k: getattr(config, k, None) for k in _ARCH_FIELDS}


def fingerprint(config) -> str:
  blob = json.dumps(base_architecture(config), sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _adapters(model) -> list[tuple[str, LoRALinear]]:
  found = list(iter_modules(model, LoRALinear))
  if not found:
    raise GemmaxError("model has no adapters; call gemmax.peft.apply or load_adapter first")
  return found


def save_adapter(model, directory: str, base_model_name_or_path: str | None = None) -> None:
  """Writes the model's adapters to `directory` (replaced atomically: temp dir, then rename)."""
  adapters = _adapters(model)
  first = adapters[0][1]
  for name, m in adapters:
    if (m.rank, m.alpha, m.use_dora, m.rslora) != (
      first.rank,
      first.alpha,
      first.use_dora,
      first.rslora,
    ):
      raise GemmaxError(
        f"save_adapter: layer {name} has a different rank/alpha/method than "
        f"{adapters[0][0]}; the HF format needs one setting for all layers"
      )
  tensors = {}
  for name, m in adapters:
    key = PREFIX + hf_module_name(name)
    tensors[key + ".lora_A.weight"] = np.asarray(jax.device_get(m.lora_a[...]), np.float32).T
    tensors[key + ".lora_B.weight"] = np.asarray(jax.device_get(m.lora_b[...]), np.float32).T
    if m.use_dora:
      tensors[key + ".lora_magnitude_vector"] = np.asarray(
        jax.device_get(m.magnitude[...]), np.float32
      )
  names = [n for n, _ in adapters]
  all_names = names + [n for n, _ in iter_modules(model, linear_types()) if not n.endswith(".base")]
  drop = first.dropout.rate if first.dropout is not None else 0.0
  config = {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "r": first.rank,
    "lora_alpha": first.alpha,
    "target_modules": compact_targets(names, all_names),
    "lora_dropout": drop,
    "use_rslora": first.rslora,
    "use_dora": first.use_dora,
    "bias": "none",
    "fan_in_fan_out": False,
    "modules_to_save": None,
    "init_lora_weights": True,
    "base_model_name_or_path": base_model_name_or_path,
    "inference_mode": True,
    "rank_pattern": {},
    "alpha_pattern": {},
    "gemmax": {
      "base_fingerprint": fingerprint(model.config),
      "base_architecture": base_architecture(model.config),
      "quantized_base": isinstance(first.base, NF4Linear),
    },
  }
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".adapter-", dir=parent)
  try:
    save_file(tensors, os.path.join(tmp, WEIGHTS))
    with open(os.path.join(tmp, CONFIG), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, default=str)
    if os.path.isdir(directory):
      old = tempfile.mkdtemp(prefix=".adapter-old-", dir=parent)
      os.replace(directory, os.path.join(old, "x"))
      os.replace(tmp, directory)
      shutil.rmtree(old)
    else:
      os.replace(tmp, directory)
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp)


def _read_config(directory: str) -> dict:
  path = os.path.join(directory, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no adapter_config.json (not a PEFT adapter directory)")
  try:
    with open(path, encoding="utf-8") as f:
      cfg = json.load(f)
  except (OSError, ValueError) as e:  # (JSON and UTF-8 errors are ValueErrors)
    raise GemmaxError(f"{path}: not a readable JSON adapter config ({e})") from None
  if not isinstance(cfg, dict):
    raise GemmaxError(f"{path}: adapter config is a JSON {type(cfg).__name__}, not an object")
  r, alpha = cfg.get("r"), cfg.get("lora_alpha", 8)
  if not isinstance(r, int) or isinstance(r, bool) or r < 1:
    raise GemmaxError(f"{path}: r (the LoRA rank) must be an integer >= 1, got {r!r}")
  if (
    not isinstance(alpha, (int, float))
    or isinstance(alpha, bool)
    or not math.isfinite(alpha)
    or alpha == 0
  ):
    raise GemmaxError(f"{path}: lora_alpha must be a finite non-zero number, got {alpha!r}")
  for key in ("use_dora", "use_rslora", "fan_in_fan_out"):
    if not isinstance(cfg.get(key, False), bool):
      raise GemmaxError(f"{path}: {key} must be true or false, got {cfg[key]!r}")
  dropout = cfg.get("lora_dropout") or 0.0
  if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
    raise GemmaxError(f"{path}: lora_dropout must be in [0, 1), got {dropout!r}")
  if not isinstance(cfg.get("gemmax") or {}, dict):
    raise GemmaxError(f"{path}: the gemmax block must be an object")
  if cfg.get("peft_type", "LORA") != "LORA":
    raise GemmaxError(f"{path}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
  for key in ("rank_pattern", "alpha_pattern"):
    if cfg.get(key):
      raise GemmaxError(f"{path}: {key} is not supported (one rank/alpha for all layers)")
  if cfg.get("bias", "none") != "none":
    raise GemmaxError(f"{path}: bias {cfg['bias']!r} is not supported (only 'none')")
  if cfg.get("modules_to_save"):
    raise GemmaxError(f"{path}: modules_to_save {cfg['modules_to_save']} is not supported")
  if cfg.get("fan_in_fan_out"):
    raise GemmaxError(f"{path}: fan_in_fan_out=true is not supported")
  return cfg


def _check_base(cfg: dict, model, path: str) -> None:
  block = cfg.get("gemmax") or {}
  want = block.get("base_fingerprint")
  if want is None or want == fingerprint(model.config):
    return
  saved = block.get("base_architecture") or {}
  have = base_architecture(model.config)
  diff = [
    f"{k} {saved.get(k)!r} vs {have[k]!r}"
    for k in have
    if k in saved and json.dumps(saved[k], default=str) != json.dumps(have[k], default=str)
  ]
  raise GemmaxError(
    f"{path}: adapter was made for a different base model (adapter vs model: "
    f"{'; '.join(diff) or 'fingerprint ' + want + ' vs ' + fingerprint(model.config)})"
  )


def _module_tensors(st: SafetensorsFile, path: str) -> dict[str, dict[str, str]]:
  """{gemmax module name: {"a"|"b"|"m": tensor name}} from peft's tensor names."""
  out = {}
  suffixes = {
    ".lora_A.weight": "a",
    ".lora_B.weight": "b",
    ".lora_magnitude_vector": "m",
    ".lora_magnitude_vector.weight": "m",
  }
  for key in st.keys():
    for suf, kind in suffixes.items():
      if key.endswith(suf):
        mod = key[: -len(suf)]
        mod = mod[len(PREFIX) :] if mod.startswith(PREFIX) else mod
        mod = mod.replace(".default", "")
        out.setdefault(gemmax_module_name(mod), {})[kind] = key
        break
    else:
      raise GemmaxError(f"{path}: tensor {key} is not a LoRA/DoRA tensor gemmax can load")
  return out


def load_adapter(model, directory: str):
  """Loads an HF PEFT LoRA/DoRA adapter into `model` (adding adapter layers if it has none).

  Refuses an adapter made for another base (gemmax fingerprint) or whose tensors do not fit.
  Returns the model.
  """
  cfg = _read_config(directory)
  _check_base(cfg, model, directory)
  wpath = os.path.join(directory, WEIGHTS)
  if not os.path.isfile(wpath):
    raise FileNotFoundError(f"{wpath}: adapter weights missing (only safetensors are read)")
  st = SafetensorsFile(wpath)
  modules = _module_tensors(st, wpath)
  dora, rank, alpha = bool(cfg.get("use_dora")), int(cfg["r"]), cfg.get("lora_alpha", 8)
  rslora = bool(cfg.get("use_rslora"))
  for name, kinds in modules.items():
    need = {"a", "b", "m"} if dora else {"a", "b"}
    if set(kinds) != need:
      raise GemmaxError(
        f"{wpath}: module {name} has tensors {sorted(kinds)}, expected "
        f"{sorted(need)} for {'DoRA' if dora else 'LoRA'}"
      )
  if not has_adapters(model):
    apply(
      model,
      method="dora" if dora else "lora",
      rank=rank,
      alpha=alpha,
      targets=sorted(modules),
      dropout=float(cfg.get("lora_dropout") or 0.0),
      rslora=rslora,
    )
  present = {n for n, _ in iter_modules(model, LoRALinear)}
  if present != set(modules):
    raise GemmaxError(
      f"{wpath}: adapter covers {len(modules)} layers, the model's adapters "
      f"{len(present)}; e.g. {sorted(set(modules) ^ present)[:3]}"
    )
  loaded = []  # every tensor is checked before the model is changed: all of it loads or none
  for name, kinds in modules.items():
    m = get_module(model, name)
    if (m.rank, m.use_dora, m.rslora) != (rank, dora, rslora) or m.alpha != float(alpha):
      raise GemmaxError(
        f"{wpath}: layer {name} of the model has r={m.rank} alpha={m.alpha} "
        f"dora={m.use_dora} rslora={m.rslora}; the adapter r={rank} "
        f"alpha={alpha} dora={dora} rslora={rslora}"
      )
    expect = {"a": (rank, m.in_features), "b": (m.out_features, rank), "m": (m.out_features,)}
    for kind, key in kinds.items():
      if st.shape(key) != expect[kind]:
        raise GemmaxError(
          f"{wpath}: tensor {key} has shape {st.shape(key)}, layer {name} needs {expect[kind]}"
        )
      if st.dtype(key) not in ("F32", "F16", "BF16", "F64"):
        raise GemmaxError(f"{wpath}: tensor {key} is stored as {st.dtype(key)}, not floating point")
      value = st.get(key).astype(np.float32)
      if not np.isfinite(value).all():
        raise GemmaxError(f"{wpath}: tensor {key} holds non-finite values (NaN or Inf)")
      var = {"a": m.lora_a, "b": m.lora_b, "m": getattr(m, "magnitude", None)}[kind]
      loaded.append((var, value.T if kind in "ab" else value))
  for var, value in loaded:
    var.set_value(jnp.asarray(value))
  return model
