"""GGUF (llama.cpp, Ollama, LM Studio) <-> gemmax, through the `gguf` package.

llama.cpp's converter changes three things that loading undoes and saving redoes:
  * names: `model.layers.0.self_attn.q_proj` is `blk.0.attn_q` (gguf's own TensorNameMap);
  * llama-architecture q/k rows are permuted for its interleaved rotary layout;
  * Gemma norm weights are stored as 1 + w.
Tensor arrays are HF's layout ([out, in] projections), so gemmax kernels are their transposes.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

from gemmax.convert.hf import DTYPES, check_dtype, fill, hf_name
from gemmax.errors import GemmaxError, MissingTensorError
from gemmax.models.config import ModelConfig
from gemmax.models.sizing import abstract_model
from gemmax.quant.gguf_file import GGUFFile

log = logging.getLogger(__name__)
_BIG_ARRAYS = (
  "tokenizer.ggml.tokens",
  "tokenizer.ggml.scores",
  "tokenizer.ggml.token_type",
  "tokenizer.ggml.merges",
)
SAVE_TYPES = ("f32", "f16", "bf16", "q8_0")
# Architectures whose q/k rows llama.cpp's converter permutes for its interleaved rotary layout.
_ROTARY_PERMUTED = {"llama": True}


def _name_map(arch: str, layers: int):
  import gguf

  arch_id = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
  return gguf.get_tensor_name_map(arch_id, layers)


def gguf_name(path: tuple, names) -> tuple[str, bool]:
  """gemmax parameter path -> (GGUF tensor name, whether it is the kernel's transpose)."""
  name, transpose = hf_name(path)
  module = name[: -len(".weight")]
  mapped = names.get_name(module)
  if mapped is None:
    raise GemmaxError(f"no GGUF tensor name for {module}")
  return mapped + ".weight", transpose


def rotary_permute(w: np.ndarray, heads: int, inverse: bool = False) -> np.ndarray:
  """llama.cpp's q/k row order: within each head, rows (i, i + d/2) become (2i, 2i + 1)."""
  rows = w.shape[0]
  if inverse:
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _open(path) -> GGUFFile:
  """The file without its vocabulary arrays (the tokenizer reads those; the model needs none)."""
  return GGUFFile(path, keep=lambda key: key not in _BIG_ARRAYS)


def config_from_gguf(source, **overrides) -> ModelConfig:
  """The ModelConfig a GGUF file (path or GGUFFile) describes."""
  f = source if isinstance(source, GGUFFile) else _open(source)
  factors = f.read("rope_freqs.weight") if "rope_freqs.weight" in f.tensors else None
  shapes = {n: f.shape(n) for n in f.tensors}
  bias = sorted(n for n in shapes if n.endswith(".bias"))
  if bias:
    raise GemmaxError(
      f"{f.path}: tensor {bias[0]} is a bias; gemmax's Llama and Gemma layers have none"
    )
  _check_numeric_fields(f)
  try:
    meta = {k: v for k, (v, _, _) in f.fields.items()}
    return ModelConfig.from_gguf(meta, shapes, factors, source=f.path, **overrides)
  except (TypeError, ValueError) as e:  # a field of the wrong type or value in the metadata
    raise GemmaxError(
      f"{f.path}: {' '.join(str(e).split())}" if f.path not in str(e) else str(e)
    ) from None


def _check_numeric_fields(f: GGUFFile) -> None:
  """llama.cpp's `<arch>.` hyperparameters are numbers (or arrays of them), except the RoPE
  scaling type: a string there is a corrupt or hand-edited file, named by its key."""
  import gguf

  arch = f.meta("general.architecture", None)
  for key, (value, vtype, _) in f.fields.items():
    if (
      isinstance(arch, str)
      and key.startswith(arch + ".")
      and vtype == gguf.GGUFValueType.STRING
      and not key.endswith(".type")
    ):
      raise GemmaxError(f"{f.path}: metadata {key} is the string {value!r}, not a number")


def load_gguf(path: str | os.PathLike, dtype=None, *, compute_dtype=None, mesh=None, **overrides):
  """Reads a GGUF file into a Transformer, dequantizing one tensor at a time.

  dtype: storage dtype of the weights (default float32: GGUF blocks dequantize to it exactly);
  compute_dtype: activation dtype (default: dtype). With `mesh`, each tensor goes straight into
  its shards. `overrides` replace ModelConfig fields (e.g. attn_impl, remat).
  """
  f = _open(path)
  config = config_from_gguf(f)
  pdt = check_dtype(dtype or "float32")
  config = config.replace(param_dtype=pdt, dtype=check_dtype(compute_dtype or pdt), **overrides)
  names = _name_map(f.architecture, config.num_hidden_layers)
  heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
  used = set()

  def get_tensor(p, shape):
    name, transpose = gguf_name(p, names)
    if name not in f.tensors:
      raise MissingTensorError(f"{f.path}: GGUF file is missing tensor {name}")
    want = shape[::-1] if transpose else shape
    if f.shape(name) != tuple(want):
      raise GemmaxError(
        f"{f.path}: tensor {name} has shape {f.shape(name)}, the config expects {tuple(want)}"
      )
    used.add(name)
    kind = name.split(".")[-2]
    gemma_norm = config.norm_offset and p[-1] == "scale"
    permute = _ROTARY_PERMUTED.get(f.architecture, False) and kind in heads
    if not (gemma_norm or permute):  # dequantized straight into the storage dtype
      a = f.read(name, DTYPES[pdt])
      return a.T if transpose else a
    a = f.read(name, np.float32)
    if gemma_norm:
      a = a - 1.0
    if permute:
      a = rotary_permute(a, heads[kind], inverse=True)
    return a.T if transpose else a

  model = fill(abstract_model(config), f.path, get_tensor, mesh, pdt)
  extra = sorted(set(f.tensors) - used - {"rope_freqs.weight", "output.weight"})
  if extra:
    log.warning("%s: %d GGUF tensors not used, e.g. %s", f.path, len(extra), extra[:3])
  return model


def _module(model, path: tuple):
  node = model
  for p in path:
    node = node[p] if isinstance(p, int) else getattr(node, p)
  return node


def effective_weight(model, path: tuple) -> np.ndarray:
  """The plain value of base parameter `path`: adapters merged, NF4 dequantized, float32."""
  import jax

  *mod_path, leaf = path
  mod = _module(model, mod_path)
  if leaf == "kernel" and not hasattr(mod, "kernel"):
    if hasattr(mod, "merged_kernel"):  # LoRA / DoRA over a Linear or NF4 base
      value = mod.merged_kernel()
    elif hasattr(mod, "kernel_value"):  # NF4 base without an adapter
      value = mod.kernel_value()
    else:
      raise GemmaxError(
        f"save_gguf: cannot read the weight of {'/'.join(map(str, mod_path))} "
        f"({type(mod).__name__})"
      )
  else:
    value = getattr(mod, leaf)[...]
  return np.asarray(jax.device_get(value), np.float32)


def _tensor_type(kind: str, shape: tuple):
  import gguf

  q = gguf.GGMLQuantizationType
  if len(shape) == 1 or kind == "f32":
    return q.F32
  if kind == "q8_0":
    return q.Q8_0 if shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] == 0 else q.F16
  return {"f16": q.F16, "bf16": q.BF16}[kind]


def save_gguf(
  model, path: str | os.PathLike, *, tokenizer, dtype: str = "f16", name: str | None = None
) -> str:
  """Writes `model` (adapters merged, NF4 dequantized) with its tokenizer and chat template as a
  GGUF file that llama.cpp, Ollama and transformers load.

  dtype: f16 | bf16 | q8_0 | f32 for the 2-D weights (norms stay float32, as llama.cpp keeps
  them). Written tensor by tensor to a temporary file in the same directory, then renamed.
  """
  import gguf
  from gemmax.data import write_tokenizer

  if dtype not in SAVE_TYPES:
    raise GemmaxError(f"save_gguf: dtype {dtype!r} is not one of {', '.join(SAVE_TYPES)}")
  config = model.config
  arch, kv = config.to_gguf()
  names = _name_map(arch, config.num_hidden_layers)
  heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
  specs = []  # (gguf name, numpy-order shape, ggml type, make)
  for p, var in _plain_params(config):
    tname, transpose = gguf_name(p, names)
    shape = tuple(var.shape)[::-1] if transpose else tuple(var.shape)
    kind = tname.split(".")[-2]

    def make(p=p, transpose=transpose, kind=kind):
      a = effective_weight(model, p)
      a = a.T if transpose else a
      if config.norm_offset and p[-1] == "scale":
        a = a + 1.0
      if _ROTARY_PERMUTED.get(arch, False) and kind in heads:
        a = rotary_permute(a, heads[kind])
      return a

    specs.append((tname, shape, _tensor_type(dtype, shape), make))
  factors = config.rope_factors()
  if factors is not None:
    specs.append(
      ("rope_freqs.weight", factors.shape, gguf.GGMLQuantizationType.F32, lambda: factors)
    )

  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".save_gguf-", suffix=".gguf", dir=parent)
  os.close(fd)
  try:
    writer = gguf.GGUFWriter(None, arch)
    writer.add_name(name or f"gemmax {arch} {config.hidden_size}x{config.num_hidden_layers}")
    writer.add_file_type(
      {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
      }[dtype]
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in kv.items():
      full = f"{arch}.{key}"
      if isinstance(value, str):
        writer.add_string(full, value)
      elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        writer.add_uint32(full, int(value))
      else:
        writer.add_float32(full, float(value))
    write_tokenizer(writer, tokenizer, vocab_size=config.vocab_size)
    for tname, shape, qtype, _ in specs:
      block, size = gguf.GGML_QUANT_SIZES[qtype]
      nbytes = int(np.prod(shape)) // block * size
      writer.add_tensor_info(tname, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
    writer.write_header_to_file(path=tmp)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tname, shape, qtype, make in specs:
      data = gguf.quants.quantize(np.ascontiguousarray(make(), np.float32), qtype)
      writer.write_tensor_data(data)
    writer.close()
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _plain_params(config: ModelConfig):
  """(path, abstract Variable) of every base parameter of a plain model with this config."""
  from gemmax.convert.hf import iter_params

  return list(iter_params(abstract_model(config)))
