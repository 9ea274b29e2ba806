"""Meta-format Llama (params.json + consolidated *.safetensors, interleaved RoPE) -> gemmax.

Meta's q/k rows pair dimensions (2i, 2i+1) per head; gemmax (like HF) pairs (i, i + d/2).
gemmax never unpickles: convert consolidated.*.pth to safetensors outside gemmax first.
"""

from __future__ import annotations

import json
import os

import numpy as np

from gemmax.convert.hf import Checkpoint, check_dtype, fill
from gemmax.errors import MissingTensorError
from gemmax.models.config import ModelConfig
from gemmax.models.sizing import abstract_model

_NAMES = {
  "q_proj": "attention.wq",
  "k_proj": "attention.wk",
  "v_proj": "attention.wv",
  "o_proj": "attention.wo",
  "gate_proj": "feed_forward.w1",
  "down_proj": "feed_forward.w2",
  "up_proj": "feed_forward.w3",
  "input_layernorm": "attention_norm",
  "post_attention_layernorm": "ffn_norm",
}


def meta_config(params: dict, vocab_size: int, rope_factor=None) -> ModelConfig:
  dim, heads = params["dim"], params["n_heads"]
  hidden = int(2 * 4 * dim / 3)
  if params.get("ffn_dim_multiplier"):
    hidden = int(params["ffn_dim_multiplier"] * hidden)
  multiple = params.get("multiple_of", 256)
  hidden = multiple * ((hidden + multiple - 1) // multiple)
  scaling = None
  if params.get("use_scaled_rope"):
    factor = rope_factor or params.get("rope_scaling_factor") or 8.0
    scaling = dict(
      rope_type="llama3",
      factor=float(factor),
      low_freq_factor=1.0,
      high_freq_factor=4.0,
      original_max_position_embeddings=8192,
    )
  return ModelConfig(
    family="llama",
    vocab_size=vocab_size,
    hidden_size=dim,
    intermediate_size=hidden,
    num_hidden_layers=params["n_layers"],
    num_attention_heads=heads,
    num_key_value_heads=params.get("n_kv_heads") or heads,
    head_dim=dim // heads,
    rope_theta=float(params.get("rope_theta", 10000.0)),
    rope_scaling=scaling,
    rms_norm_eps=params.get("norm_eps", 1e-5),
    tie_word_embeddings=False,
  )


def interleaved_to_half_split(w: np.ndarray, heads: int) -> np.ndarray:
  """[heads * d, in] rows in Meta order (pairs 2i, 2i+1) -> HF order (pairs i, i + d/2)."""
  rows, cols = w.shape
  d = rows // heads
  return w.reshape(heads, d // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def load_meta(path: str, dtype="float32", *, rope_factor=None, mesh=None, **overrides):
  """Loads a Meta-layout Llama directory; `rope_factor` 8 (3.1) or 32 (3.2) when use_scaled_rope."""
  pfile = os.path.join(path, "params.json")
  if not os.path.isfile(pfile):
    raise FileNotFoundError(f"{pfile}: no params.json (not a Meta-format Llama checkpoint)")
  with open(pfile, encoding="utf-8") as f:
    params = json.load(f)
  ckpt = Checkpoint(path)
  if "tok_embeddings.weight" not in ckpt:
    raise MissingTensorError(f"{path}: checkpoint is missing tensor tok_embeddings.weight")
  vocab = ckpt.shape("tok_embeddings.weight")[0]
  dt = check_dtype(dtype)
  config = meta_config(params, vocab, rope_factor).replace(param_dtype=dt, dtype=dt, **overrides)

  def get_tensor(p, shape):
    if p[0] == "embed_tokens":
      name, transpose = "tok_embeddings.weight", False
    elif p[0] == "norm":
      name, transpose = "norm.weight", False
    elif p[0] == "lm_head":
      name, transpose = "output.weight", True
    else:
      module = p[-2] if p[-1] == "kernel" else p[-2]
      name, transpose = f"layers.{p[1]}.{_NAMES[module]}.weight", p[-1] == "kernel"
    if name not in ckpt:
      raise MissingTensorError(f"{path}: checkpoint is missing tensor {name}")
    w = ckpt.get(name)
    if name.endswith(("wq.weight", "wk.weight")):
      heads = config.num_attention_heads if "wq" in name else config.num_key_value_heads
      w = interleaved_to_half_split(w, heads)
    return w.T if transpose else w

  return fill(abstract_model(config), path, get_tensor, mesh, dt)
