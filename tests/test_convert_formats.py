"""Meta-format Llama and Kaggle/Orbax Gemma 2 imports, and the loader's error messages."""

import json
import os

import numpy as np
import pytest
import torch

import jax.numpy as jnp
from flax import nnx

from gemmax.convert import load_hf, load_kaggle, load_meta
from gemmax.io.safetensors import SafetensorsFile, save_file
from gemmax.models import ModelConfig
from hf_models import gemma2_config, llama_config, make_hf_model, save_hf_model

_forward = nnx.jit(lambda model, ids: model(ids))


def _ref_logits(hf, ids):
  with torch.no_grad():
    return hf(torch.tensor(ids)).logits.numpy()


def _weights(hf):
  return {k: v.detach().numpy() for k, v in hf.state_dict().items()}


def test_meta_llama_with_interleaved_rope(tmp_path):
  # Meta's FFN size formula: int(2 * 4 * 64 / 3) = 170 -> multiple of 32 -> 192.
  hf = make_hf_model(
    llama_config(
      intermediate_size=192,
      rope_scaling=dict(
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
      ),
    )
  )
  c, w = hf.config, _weights(hf)

  def to_meta(x, heads):  # inverse of HF's conversion permute (Meta pairs 2i, 2i+1)
    rows, cols = x.shape
    return x.reshape(heads, 2, rows // heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)

  meta = {
    "tok_embeddings.weight": w["model.embed_tokens.weight"],
    "norm.weight": w["model.norm.weight"],
    "output.weight": w["lm_head.weight"],
  }
  names = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
  }
  for i in range(c.num_hidden_layers):
    for hf_name, meta_name in names.items():
      x = w[f"model.layers.{i}.{hf_name}.weight"]
      if meta_name == "attention.wq":
        x = to_meta(x, c.num_attention_heads)
      if meta_name == "attention.wk":
        x = to_meta(x, c.num_key_value_heads)
      meta[f"layers.{i}.{meta_name}.weight"] = x
  save_file(meta, str(tmp_path / "consolidated.00.safetensors"))
  (tmp_path / "params.json").write_text(
    json.dumps(
      dict(
        dim=64,
        n_layers=c.num_hidden_layers,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=256,
        multiple_of=32,
        norm_eps=c.rms_norm_eps,
        rope_theta=500000.0,
        use_scaled_rope=True,
      )
    )
  )
  model = load_meta(str(tmp_path), rope_factor=8)
  ids = np.random.RandomState(0).randint(0, 256, (2, 16))
  np.testing.assert_allclose(
    np.asarray(_forward(model, jnp.asarray(ids))), _ref_logits(hf, ids), atol=1e-4
  )


def test_kaggle_orbax_gemma2(tmp_path):
  hf = make_hf_model(gemma2_config())
  c, w = hf.config, _weights(hf)
  n, k, h, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size
  emb = w["model.embed_tokens.weight"]
  params = {
    "transformer": {
      "embedder": {"input_embedding": np.concatenate([emb, np.ones((128, d), np.float32)])},
      "final_norm": {"scale": w["model.norm.weight"]},
    }
  }
  for i in range(c.num_hidden_layers):
    p = lambda s: w[f"model.layers.{i}.{s}.weight"]
    heads = lambda x, m: x.reshape(m, h, d).transpose(0, 2, 1)  # [m*h, d] -> [m, d, h]
    params["transformer"][f"layer_{i}"] = {
      "attn": {
        "q_einsum": {"w": heads(p("self_attn.q_proj"), n)},
        "kv_einsum": {
          "w": np.stack([heads(p("self_attn.k_proj"), k), heads(p("self_attn.v_proj"), k)])
        },
        "attn_vec_einsum": {"w": p("self_attn.o_proj").T.reshape(n, h, d)},
      },
      "mlp": {
        "gating_einsum": {"w": np.stack([p("mlp.gate_proj"), p("mlp.up_proj")])},
        "linear": {"w": p("mlp.down_proj").T},
      },
      "pre_attention_norm": {"scale": p("input_layernorm")},
      "post_attention_norm": {"scale": p("post_attention_layernorm")},
      "pre_ffw_norm": {"scale": p("pre_feedforward_layernorm")},
      "post_ffw_norm": {"scale": p("post_feedforward_layernorm")},
    }
  import orbax.checkpoint as ocp

  ocp.PyTreeCheckpointer().save(str(tmp_path / "ckpt"), params)
  config = ModelConfig.from_hf(c.to_dict())
  model = load_kaggle(str(tmp_path / "ckpt"), config)
  ids = np.random.RandomState(0).randint(0, 256, (2, 20))
  np.testing.assert_allclose(
    np.asarray(_forward(model, jnp.asarray(ids))), _ref_logits(hf, ids), atol=1e-4
  )


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  return save_hf_model(make_hf_model(llama_config()), str(tmp_path_factory.mktemp("llama")))


def _copy_with(src, dst, edit):
  os.makedirs(dst)
  st = SafetensorsFile(os.path.join(src, "model.safetensors"))
  tensors = edit({k: st.get(k) for k in st.keys()})
  save_file(tensors, os.path.join(dst, "model.safetensors"))
  with open(os.path.join(src, "config.json")) as f:
    cfg = json.load(f)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(cfg, f)
  return dst


def test_missing_tensor_is_named(llama_dir, tmp_path):
  name = "model.layers.1.mlp.up_proj.weight"
  bad = _copy_with(
    llama_dir, str(tmp_path / "m"), lambda t: {k: v for k, v in t.items() if k != name}
  )
  with pytest.raises(KeyError, match=r"missing tensor model\.layers\.1\.mlp\.up_proj\.weight"):
    load_hf(bad)


def test_wrong_shape_names_tensor_and_both_shapes(llama_dir, tmp_path):
  name = "model.layers.0.self_attn.k_proj.weight"
  bad = _copy_with(llama_dir, str(tmp_path / "m"), lambda t: {**t, name: t[name][:16]})
  with pytest.raises(
    ValueError, match=r"k_proj\.weight has shape \(16, 64\), the config expects \(32, 64\)"
  ):
    load_hf(bad)


def test_unsupported_architecture(tmp_path):
  (tmp_path / "config.json").write_text(
    json.dumps({"architectures": ["MistralForCausalLM"], "model_type": "mistral"})
  )
  with pytest.raises(ValueError, match="unsupported architecture"):
    load_hf(str(tmp_path))


def test_dtype_that_cannot_be_honoured(llama_dir):
  with pytest.raises(ValueError, match="int8.*cannot be honoured"):
    load_hf(llama_dir, dtype="int8")


def test_missing_directory():
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_hf("/nonexistent/ckpt")
