"""Kaggle / google-deepmind Gemma 2 parameters (Orbax, `transformer/layer_N/attn/q_einsum/w`).

Einsum layouts: q_einsum [N, D, H], kv_einsum [2, K, D, H], attn_vec_einsum [N, H, D],
gating_einsum [2, F, D] or [2, D, F], linear [F, D], embedder [vocab_padded, D] (256128 rows
for the real models, sliced to the config's vocab).
"""

from __future__ import annotations

import numpy as np

from gemmax.convert.hf import check_dtype, fill
from gemmax.errors import MissingTensorError
from gemmax.models.config import ModelConfig
from gemmax.models.sizing import abstract_model

_NORMS = {
  "input_layernorm": "pre_attention_norm",
  "post_attention_layernorm": "post_attention_norm",
  "pre_feedforward_layernorm": "pre_ffw_norm",
  "post_feedforward_layernorm": "post_ffw_norm",
}


def flatten_params(tree, prefix="") -> dict[str, np.ndarray]:
  """Nested dicts (or dicts keyed 'transformer/layer_0/attn/q_einsum') -> {'a/b/c': array}."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, dict):
      out.update(flatten_params(v, key))
    else:
      out[key] = v
  return out


def kaggle_tensor(flat: dict, p: tuple, config: ModelConfig, source: str) -> np.ndarray:
  """The gemmax-layout array for parameter path `p` from flat Kaggle params."""

  def get(name):
    if name not in flat:
      raise MissingTensorError(f"{source}: checkpoint is missing tensor {name}")
    return np.asarray(flat[name])

  d, n, k, h = (
    config.hidden_size,
    config.num_attention_heads,
    config.num_key_value_heads,
    config.head_dim,
  )
  if p[0] == "embed_tokens":
    return get("transformer/embedder/input_embedding")[: config.vocab_size]
  if p[0] == "norm":
    return get("transformer/final_norm/scale")
  layer = f"transformer/layer_{p[1]}"
  module = p[-2]
  if module in _NORMS:
    return get(f"{layer}/{_NORMS[module]}/scale")
  if module == "q_proj":
    if f"{layer}/attn/qkv_einsum/w" in flat:
      return get(f"{layer}/attn/qkv_einsum/w")[0].transpose(1, 0, 2).reshape(d, n * h)
    return get(f"{layer}/attn/q_einsum/w").transpose(1, 0, 2).reshape(d, n * h)
  if module in ("k_proj", "v_proj"):
    i = 0 if module == "k_proj" else 1
    if f"{layer}/attn/qkv_einsum/w" in flat:
      return get(f"{layer}/attn/qkv_einsum/w")[1 + i].transpose(1, 0, 2).reshape(d, k * h)
    return get(f"{layer}/attn/kv_einsum/w")[i].transpose(1, 0, 2).reshape(d, k * h)
  if module == "o_proj":
    return get(f"{layer}/attn/attn_vec_einsum/w").reshape(n * h, d)
  if module in ("gate_proj", "up_proj"):
    w = get(f"{layer}/mlp/gating_einsum/w")[0 if module == "gate_proj" else 1]
    return w if w.shape == (d, config.intermediate_size) else w.T
  if module == "down_proj":
    return get(f"{layer}/mlp/linear/w")
  raise MissingTensorError(f"{source}: no Kaggle tensor for {'/'.join(map(str, p))}")


def load_kaggle(params_or_path, config: ModelConfig, dtype="float32", *, mesh=None):
  """Gemma 2 from Kaggle params: a nested dict of arrays, or an Orbax checkpoint directory."""
  source = "params"
  if not isinstance(params_or_path, dict):
    import orbax.checkpoint as ocp

    source = str(params_or_path)
    params_or_path = ocp.PyTreeCheckpointer().restore(source)
  flat = flatten_params(params_or_path)
  flat = {k[: -len("/w")] + "/w" if k.endswith("/w") else k: v for k, v in flat.items()}
  flat = {k[len("params/") :] if k.startswith("params/") else k: v for k, v in flat.items()}
  dt = check_dtype(dtype)
  config = config.replace(param_dtype=dt, dtype=dt)
  return fill(
    abstract_model(config),
    source,
    lambda p, shape: kaggle_tensor(flat, p, config, source),
    mesh,
    dt,
  )
