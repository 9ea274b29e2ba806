"""ModelConfig <-> GGUF metadata (llama.cpp's key names for architectures llama, gemma2, gemma3).

Defaults are llama.cpp's where a file is silent; what llama.cpp derives rather than stores
(Gemma's query scale, Gemma 3's layer pattern and local RoPE base) is derived the same way here.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from gemmax.errors import GemmaxError
from gemmax.models.config import FULL, SLIDING, ModelConfig, RopeScaling
from gemmax.models.rope import inverse_frequencies

_GGUF_ARCH = {"llama": "llama", "gemma2": "gemma2", "gemma3": "gemma3"}  # GGUF arch -> family
_GGUF_27B = {"gemma2": 46, "gemma3": 62}  # block counts of the 27B models (see config_kwargs)


def config_kwargs(
  meta: Mapping[str, Any], tensor_shapes: Mapping[str, tuple], rope_factors, source: str
) -> dict:
  """ModelConfig fields from a GGUF file's metadata, its tensors' numpy-order shapes and, when
  the file has one, its `rope_freqs` tensor (llama3 RoPE scaling as per-frequency divisors)."""
  arch = meta.get("general.architecture")
  if arch not in _GGUF_ARCH:
    raise GemmaxError(
      f"{source}: GGUF architecture {arch!r} is not supported (supported: {', '.join(_GGUF_ARCH)})"
    )
  family = _GGUF_ARCH[arch]
  key = lambda name, default=None: meta.get(f"{arch}.{name}", default)
  needed = ("embedding_length", "block_count", "feed_forward_length", "attention.head_count")
  lacking = [f"{arch}.{k}" for k in needed if key(k) is None]
  if lacking or "token_embd.weight" not in tensor_shapes:
    raise GemmaxError(f"{source}: lacks {', '.join(lacking or ['tensor token_embd.weight'])}")
  hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
  head_dim = int(
    key("attention.key_length")
    or (key("rope.dimension_count") if family == "llama" else None)
    or hidden // heads
  )
  kw = dict(
    family=family,
    vocab_size=int(tensor_shapes["token_embd.weight"][0]),
    hidden_size=hidden,
    intermediate_size=int(key("feed_forward_length")),
    num_hidden_layers=int(key("block_count")),
    num_attention_heads=heads,
    num_key_value_heads=int(key("attention.head_count_kv", heads)),
    head_dim=head_dim,
    rope_theta=float(key("rope.freq_base", 10000.0)),
    rms_norm_eps=_f32(key("attention.layer_norm_rms_epsilon", 1e-5 if family == "llama" else 1e-6)),
    max_position_embeddings=int(key("context_length", 8192)),
    tie_word_embeddings="output.weight" not in tensor_shapes,
    bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
    eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
    pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
  )
  if family in ("gemma2", "gemma3"):
    # llama.cpp's Gemma graphs scale queries by hidden / heads for the 27B models (Gemma 2: 46
    # blocks, Gemma 3: 62) and by head_dim otherwise; the file has no query_pre_attn_scalar.
    scalar = hidden // heads if kw["num_hidden_layers"] == _GGUF_27B[family] else head_dim
    kw.update(hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=scalar)
  if family == "gemma2":
    kw.update(
      sliding_window=key("attention.sliding_window", 4096),
      attn_logit_softcapping=_f32(key("attn_logit_softcapping", 50.0)),
      final_logit_softcapping=_f32(key("final_logit_softcapping", 30.0)),
    )
  if family == "gemma3":
    # llama.cpp's Gemma 3: five sliding layers to one global, local RoPE base 10,000 without
    # scaling (neither is in the file), no soft-caps.
    kw.update(
      sliding_window=int(key("attention.sliding_window", 4096)),
      rope_local_base_freq=10_000.0,
    )
  kw["rope_scaling"] = _gguf_rope_scaling(key, kw, rope_factors, source)
  return kw


def gguf_metadata(config: ModelConfig) -> tuple[str, dict]:
  """(architecture, {key: value}) of the model metadata llama.cpp reads; the llama3 RoPE factors
  go in a `rope_freqs` tensor (see `rope_factors`)."""
  arch = {v: k for k, v in _GGUF_ARCH.items()}[config.family]
  if config.family == "gemma3" and (
    [config.layer_type(i) for i in range(config.num_hidden_layers)]
    != [SLIDING if (i + 1) % 6 else FULL for i in range(config.num_hidden_layers)]
    or config.rope_local_base_freq != 10_000.0
    or config.rope_local_scaling is not None
  ):
    raise GemmaxError(
      "save_gguf: llama.cpp's gemma3 fixes five sliding layers to one global and local RoPE "
      "base 10,000; this config differs"
    )
  out = {
    "context_length": config.max_position_embeddings,
    "embedding_length": config.hidden_size,
    "block_count": config.num_hidden_layers,
    "feed_forward_length": config.intermediate_size,
    "attention.head_count": config.num_attention_heads,
    "attention.head_count_kv": config.num_key_value_heads,
    "attention.layer_norm_rms_epsilon": config.rms_norm_eps,
    "rope.freq_base": config.rope_theta,
    "attention.key_length": config.head_dim,
    "attention.value_length": config.head_dim,
  }
  if config.family == "llama":
    out.update({"vocab_size": config.vocab_size, "rope.dimension_count": config.head_dim})
  else:
    scalar = (
      config.hidden_size // config.num_attention_heads
      if config.num_hidden_layers == _GGUF_27B[config.family]
      else config.head_dim
    )
    if float(config.query_pre_attn_scalar or config.head_dim) != float(scalar):
      raise GemmaxError(
        f"query_pre_attn_scalar {config.query_pre_attn_scalar} cannot be written to "
        f"GGUF: llama.cpp derives {scalar} for a {config.family} model of this shape"
      )
    out.update(
      {
        "attention.sliding_window": config.sliding_window,
        "attn_logit_softcapping": config.attn_logit_softcapping,
        "final_logit_softcapping": config.final_logit_softcapping,
      }
    )
    out = {k: v for k, v in out.items() if v is not None}
  if config.rope_scaling is not None and config.rope_scaling.rope_type == "linear":
    out.update({"rope.scaling.type": "linear", "rope.scaling.factor": config.rope_scaling.factor})
  return arch, out


def rope_factors(config: ModelConfig):
  """llama.cpp's `rope_freqs` tensor for llama3 scaling (per-frequency divisors), else None."""
  if config.rope_scaling is None or config.rope_scaling.rope_type != "llama3":
    return None
  plain = inverse_frequencies(config.head_dim, config.rope_theta)
  return (
    plain / inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
  ).astype(np.float32)


def _f32(x):
  """A GGUF float32 value as the decimal it was written from (1e-05, not 9.99999974738e-06)."""
  return None if x is None else float(np.format_float_scientific(np.float32(x), unique=True))


def _gguf_rope_scaling(key, kw, rope_factors, source):
  """RoPE scaling from `{arch}.rope.scaling.*` or llama.cpp's `rope_freqs` factors (llama3)."""
  kind = key("rope.scaling.type", "none")
  if rope_factors is not None:
    factors = np.asarray(rope_factors, np.float32).reshape(-1)
    # llama.cpp's converter writes llama3 factors with low 1, high 4 and 8192 original positions.
    original = int(key("rope.scaling.original_context_length", 8192))
    guess = RopeScaling(
      "llama3", factor=float(factors.max()), original_max_position_embeddings=original
    )
    probe = ModelConfig(**{**kw, "rope_scaling": guess}).rope_factors()
    if probe.shape != factors.shape or not np.allclose(probe, factors, rtol=1e-5):
      raise GemmaxError(
        f"{source}: rope_freqs tensor is not llama3 RoPE scaling as llama.cpp writes "
        "it; gemmax cannot represent it"
      )
    return guess
  if kind in ("none", None):
    return None
  if kind == "linear":
    return RopeScaling("linear", factor=float(key("rope.scaling.factor", 1.0)))
  raise GemmaxError(
    f"{source}: rope scaling type {kind!r} is not supported (supported: linear, llama3 factors)"
  )
