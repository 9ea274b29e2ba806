"""HF transformers checkpoints <-> gemmax: config.json + (sharded) model.safetensors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemmax.io.safetensors import DTYPES as SAFETENSORS_DTYPES
from gemmax.io.safetensors import SafetensorsFile, save_lazy
from gemmax.errors import GemmaxError, MissingTensorError
from gemmax.models.config import ModelConfig
from gemmax.models.sizing import abstract_model
from gemmax.models.transformer import Transformer

log = logging.getLogger(__name__)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_SHARD_BYTES = 4 << 30
FLOAT_CODES = ("F32", "F16", "BF16", "F64")  # the safetensors dtypes a weight may be stored in


def check_dtype(dtype) -> str:
  name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
  name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(
    name, name
  )
  if name not in DTYPES:
    raise GemmaxError(
      f"dtype {dtype!r} cannot be honoured for model weights; choose one of {', '.join(DTYPES)}"
    )
  return name


def iter_params(model):
  """(path, Variable) for every nnx.Param of the model, path like ('layers', 0, 'mlp', ...)."""
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Param):
      yield tuple(path), node


def hf_name(path: tuple) -> tuple[str, bool]:
  """gemmax parameter path -> (HF tensor name, whether the HF tensor is the transpose)."""
  *modules, leaf = path
  prefix = "" if modules[0] == "lm_head" else "model."
  return prefix + ".".join(str(m) for m in modules) + ".weight", leaf == "kernel"


# Where a multimodal checkpoint (Gemma3ForConditionalGeneration) keeps its text tower's
# `model.*` tensors: transformers >= 4.52 writes `model.language_model.*`, the Hub's original
# checkpoints `language_model.model.*`.
_TEXT_TOWER_PREFIXES = ("model.language_model.", "language_model.model.")


def text_tower_name(name: str, names) -> str:
  """`name` as the checkpoint holding `names` spells it: a `model.*` tensor of a multimodal
  checkpoint lives under its language-model prefix."""
  if name in names or not name.startswith("model."):
    return name
  for prefix in _TEXT_TOWER_PREFIXES:
    if prefix + name[len("model.") :] in names:
      return prefix + name[len("model.") :]
  return name


def read_index(index: str) -> dict:
  """model.safetensors.index.json -> its weight_map, checked: a JSON object whose weight_map maps
  tensor names to .safetensors files beside the index (a bare file name: nothing outside the
  checkpoint directory is read)."""
  try:
    with open(index, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise GemmaxError(f"{index}: not a readable JSON index ({e})") from None
  weight_map = data.get("weight_map") if isinstance(data, dict) else None
  if not isinstance(weight_map, dict) or not weight_map:
    raise GemmaxError(f"{index}: needs a non-empty \"weight_map\" object of tensor name -> file")
  for name, fn in weight_map.items():
    if (
      not isinstance(fn, str)
      or os.path.basename(fn) != fn
      or fn in ("", ".", "..")
      or not fn.endswith(".safetensors")
    ):
      raise GemmaxError(
        f"{index}: weight_map[{name!r}] = {fn!r} is not a .safetensors file name "
        "in the checkpoint directory"
      )
    if not os.path.isfile(os.path.join(os.path.dirname(index), fn)):
      raise GemmaxError(f"{index}: weight_map[{name!r}] names {fn}, which does not exist")
  return weight_map


class Checkpoint:
  """The tensors of a checkpoint directory: one or several .safetensors files."""

  def __init__(self, directory: str):
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
      weight_map = read_index(index)
      files = {fn: SafetensorsFile(os.path.join(directory, fn)) for fn in set(weight_map.values())}
      for name, fn in weight_map.items():
        if name not in files[fn].header:
          raise GemmaxError(
            f"{index}: weight_map puts tensor {name} in {fn}, which does not hold it"
          )
      self.where = {name: files[fn] for name, fn in weight_map.items()}
    else:
      names = sorted(fn for fn in os.listdir(directory) if fn.endswith(".safetensors"))
      if not names:
        raise FileNotFoundError(
          f"{directory}: no model.safetensors or index found "
          "(gemmax loads only safetensors; convert .bin/.pth files first)"
        )
      self.where = {}
      for fn in names:
        st = SafetensorsFile(os.path.join(directory, fn))
        self.where.update({k: st for k in st.keys()})

  def __contains__(self, name):
    return name in self.where

  def shape(self, name):
    return self.where[name].shape(name)

  def get(self, name):
    return self.where[name].get(name)


def place(array: np.ndarray, var: nnx.Variable, mesh=None) -> jax.Array:
  """Host array -> device, straight into its shard when a mesh is given."""
  if mesh is None:
    return jax.device_put(array)
  from gemmax.sharding import sharding_for_axes

  return jax.device_put(array, sharding_for_axes(var.get_metadata().get("axes"), array.shape, mesh))


def fill(model, source: str, get_tensor, mesh=None, dtype="float32"):
  """Fills an abstract model tensor by tensor. `get_tensor(path, expected_shape)` -> np array."""
  for path, var in iter_params(model):
    array = get_tensor(path, tuple(var.shape))
    if tuple(array.shape) != tuple(var.shape):
      raise GemmaxError(
        f"{source}: tensor for {'/'.join(map(str, path))} has shape "
        f"{tuple(array.shape)}, the config expects {tuple(var.shape)}"
      )
    # One copy at most: transpose and cast together (the source buffer is freed right after).
    array = np.ascontiguousarray(array, dtype=DTYPES[dtype])
    var.set_value(place(array, var, mesh))
    del array
  return model


def load_hf(path: str, dtype=None, *, compute_dtype=None, mesh=None, **overrides) -> Transformer:
  """Reads an HF checkpoint directory into a Transformer, one tensor at a time.

  dtype: storage dtype of the weights (default: the checkpoint's torch_dtype);
  compute_dtype: activation dtype (default: dtype). `overrides` replace ModelConfig fields.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: checkpoint directory does not exist")
  config = ModelConfig.from_hf(path)
  pdt = check_dtype(dtype or config.param_dtype)
  config = config.replace(param_dtype=pdt, dtype=check_dtype(compute_dtype or pdt), **overrides)
  ckpt = Checkpoint(path)
  used = set()

  def get_tensor(p, shape):
    name, transpose = hf_name(p)
    name = text_tower_name(name, ckpt)
    if name not in ckpt:
      raise MissingTensorError(f"{path}: checkpoint is missing tensor {name}")
    want = shape[::-1] if transpose else shape
    if ckpt.shape(name) != want:
      raise GemmaxError(
        f"{path}: tensor {name} has shape {ckpt.shape(name)}, the config expects {want}"
      )
    stored = ckpt.where[name].dtype(name)
    if stored not in FLOAT_CODES:
      raise GemmaxError(
        f"{path}: tensor {name} is stored as {stored}; model weights are "
        f"floating point ({', '.join(FLOAT_CODES)})"
      )
    used.add(name)
    a = ckpt.get(name)
    if not np.isfinite(a).all():  # a corrupt or diverged checkpoint: never train on it
      raise GemmaxError(f"{path}: tensor {name} holds non-finite values (NaN or Inf)")
    return a.T if transpose else a

  model = fill(abstract_model(config), path, get_tensor, mesh, pdt)
  extra = sorted(set(ckpt.where) - used - {"lm_head.weight"})
  if extra:
    log.warning("%s: %d checkpoint tensors not used, e.g. %s", path, len(extra), extra[:3])
  return model


def _into_multimodal(source: str, config: dict, specs: list) -> tuple[dict, list]:
  """(config.json, tensor specs) of a Gemma3ForConditionalGeneration checkpoint: `source`'s with
  its text tower replaced by ours (same names and shapes, under the prefix `source` uses); the
  vision tower, projector and the rest of its config as they were."""
  cfg_path = os.path.join(source, "config.json")
  try:
    with open(cfg_path, encoding="utf-8") as f:
      mm = json.load(f)
  except (OSError, ValueError) as e:
    raise GemmaxError(f"{cfg_path}: not a readable config ({e})") from None
  if not isinstance(mm, dict) or not isinstance(mm.get("text_config"), dict):
    raise GemmaxError(f"{source}: not a multimodal checkpoint (config.json has no text_config)")
  src = Checkpoint(source)
  renamed, taken = [], set()
  for name, shape, np_dt, make in specs:
    theirs = text_tower_name(name, src.where)
    if name.startswith("lm_head") and theirs not in src:
      theirs = "language_model." + name  # the Hub layout's head
    if theirs not in src or tuple(src.shape(theirs)) != tuple(shape):
      got = tuple(src.shape(theirs)) if theirs in src else "no such tensor"
      raise GemmaxError(
        f"{source}: its text tower does not match the model: {theirs} is {got}, the model's "
        f"{name} {tuple(shape)}"
      )
    renamed.append((theirs, shape, np_dt, make))
    taken.add(theirs)
  rest = [n for n in src.where if n not in taken and not n.startswith(_TEXT_TOWER_PREFIXES)]
  rest = [n for n in rest if n not in ("lm_head.weight", "language_model.lm_head.weight")]
  kept = [
    (n, src.shape(n), np.dtype(SAFETENSORS_DTYPES[src.where[n].dtype(n)]), (lambda n=n: src.get(n)))
    for n in rest
  ]
  text = {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")}
  return {**mm, "text_config": {**mm["text_config"], **text}}, renamed + kept


def save_hf(
  model: Transformer,
  path: str,
  dtype=None,
  *,
  max_shard_bytes: int = _SHARD_BYTES,
  multimodal: str | None = None,
) -> None:
  """Writes config.json + model.safetensors (sharded with an index past `max_shard_bytes`) that
  `transformers.AutoModelForCausalLM.from_pretrained` loads. Written to a temp dir, then moved.

  multimodal: a Gemma3ForConditionalGeneration checkpoint directory (the one the text tower was
  loaded from): the output is that checkpoint with this model as its text tower -- vision tower,
  projector and their config copied unchanged -- which `Gemma3ForConditionalGeneration` loads.
  """
  config = model.config
  dt = check_dtype(dtype or config.param_dtype)
  np_dt = np.dtype(DTYPES[dt])
  specs = []
  for p, var in iter_params(model):
    if p[-1] not in ("kernel", "embedding", "scale"):
      raise GemmaxError(
        f"save_hf: parameter {'/'.join(map(str, p))} is not a base weight; "
        "merge adapters first (gemmax.peft.merge)"
      )
    name, transpose = hf_name(p)
    shape = tuple(var.shape)[::-1] if transpose else tuple(var.shape)
    make = lambda v=var, t=transpose: np.asarray(jax.device_get(v[...].T if t else v[...]))
    specs.append((name, shape, np_dt, make))
  hf_config = config.replace(param_dtype=dt).to_hf()
  if multimodal:
    hf_config, specs = _into_multimodal(multimodal, hf_config, specs)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".save_hf-", dir=parent)
  try:
    shards, size = [[]], 0
    for s in specs:
      nbytes = int(np.prod(s[1])) * np.dtype(s[2]).itemsize
      if shards[-1] and size + nbytes > max_shard_bytes:
        shards.append([])
        size = 0
      shards[-1].append(s)
      size += nbytes
    if len(shards) == 1:
      save_lazy(shards[0], os.path.join(tmp, "model.safetensors"))
    else:
      weight_map = {}
      for i, shard in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_lazy(shard, os.path.join(tmp, fn))
        weight_map.update({s[0]: fn for s in shard})
      total = sum(int(np.prod(s[1])) * np.dtype(s[2]).itemsize for s in specs)
      with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    os.makedirs(path, exist_ok=True)
    for fn in sorted(os.listdir(tmp)):  # config.json last: a complete checkpoint or none
      if fn != "config.json":
        os.replace(os.path.join(tmp, fn), os.path.join(path, fn))
    os.replace(os.path.join(tmp, "config.json"), os.path.join(path, "config.json"))
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp)
