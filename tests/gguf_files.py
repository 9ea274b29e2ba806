"""Tiny GGUF files written with gguf's own writer the way llama.cpp's convert_hf_to_gguf.py
writes them (names from gguf's TensorNameMap, llama q/k rows permuted, Gemma norms as 1 + w),
from a transformers model: the files gemmax's reader is checked on."""

from __future__ import annotations

import math

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
QUANTIZABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


def _permute(w, heads):
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_factors(dim, rope):
  """llama.cpp's convert_hf_to_gguf.py rope factors (its original context is always 8192)."""
  freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
  factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
  old = 8192
  out = []
  for f in freqs:
    wavelen = 2 * math.pi / f
    if wavelen < old / high:
      out.append(1.0)
    elif wavelen > old / low:
      out.append(factor)
    else:
      smooth = (old / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.asarray(out, np.float32)


def write_gguf(hf_model, path, qtype="F16", tokens=None):
  """hf_model (LlamaForCausalLM / Gemma2ForCausalLM) -> a GGUF file with 2-D weights in `qtype`
  (F16 where a row is not whole blocks, as llama.cpp does) and 1-D norms in F32."""
  cfg = hf_model.config
  arch = {"llama": "llama", "gemma2": "gemma2", "gemma3_text": "gemma3"}[cfg.model_type]
  arch_id = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
  names = gguf.get_tensor_name_map(arch_id, cfg.num_hidden_layers)
  w = gguf.GGUFWriter(path, arch)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_block_count(cfg.num_hidden_layers)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_attention_heads)
  w.add_head_count_kv(cfg.num_key_value_heads)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  rope = cfg.rope_parameters
  rope = rope.get("full_attention", rope)  # Gemma 3: the global layers' (llama.cpp's freq_base)
  w.add_rope_freq_base(rope["rope_theta"])
  w.add_key_length(cfg.head_dim)
  w.add_value_length(cfg.head_dim)
  w.add_vocab_size(cfg.vocab_size)
  if arch == "llama":
    w.add_rope_dimension_count(cfg.head_dim)
  elif arch == "gemma2":
    w.add_sliding_window(cfg.sliding_window)
    w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
    w.add_final_logit_softcapping(cfg.final_logit_softcapping)
  else:
    w.add_sliding_window(cfg.sliding_window)
  w.add_tokenizer_model("gpt2")
  w.add_token_list(tokens or [f"<t{i}>" for i in range(cfg.vocab_size)])
  w.add_bos_token_id(cfg.bos_token_id)
  w.add_eos_token_id(cfg.eos_token_id)
  if rope.get("rope_type") == "llama3":  # llama.cpp's per-frequency divisors, as a tensor
    w.add_tensor("rope_freqs.weight", llama3_factors(cfg.head_dim, rope))
  qt = Q[qtype]
  for name, t in hf_model.state_dict().items():
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
      continue
    a = t.detach().float().numpy()
    module = name[: -len(".weight")]
    gname = names.get_name(module) + ".weight"
    if arch in ("gemma2", "gemma3") and name.endswith("norm.weight"):
      a = a + 1.0
    if arch == "llama" and gname.split(".")[-2] in ("attn_q", "attn_k"):
      heads = cfg.num_attention_heads if "attn_q" in gname else cfg.num_key_value_heads
      a = _permute(a, heads)
    this = Q.F32 if a.ndim == 1 else qt
    if this not in (Q.F32, Q.F16) and a.shape[-1] % gguf.GGML_QUANT_SIZES[this][0]:
      this = Q.F16
    data = gguf.quants.quantize(np.ascontiguousarray(a, np.float32), this)
    w.add_tensor(gname, data, raw_dtype=this if data.dtype == np.uint8 else None)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def rewrite_gguf(src, dst, *, tensor=None, meta=None, arch=None):
  """Copies a GGUF file through gguf's reader and writer; `tensor(t)` -> (name, data, type) or
  None (dropped); `meta(key, value)` -> value, None (dropped) or (value, GGUFValueType)."""
  r = gguf.GGUFReader(src)
  w = gguf.GGUFWriter(dst, arch or r.fields["general.architecture"].contents())
  for k, f in r.fields.items():
    if k.startswith("GGUF.") or k == "general.architecture":
      continue
    v, vtype = f.contents(), f.types[0]
    if meta:
      v = meta(k, v)
      if isinstance(v, tuple):
        v, vtype = v
    if v is None:
      continue
    if vtype == gguf.GGUFValueType.ARRAY:
      w.add_array(k, v)
    else:
      w.add_key_value(k, v, vtype)
  for t in r.tensors:
    out = tensor(t) if tensor else None
    out = out if tensor else (t.name, np.array(t.data), t.tensor_type)
    if out is None:
      continue
    name, data, qtype = out
    w.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return dst
