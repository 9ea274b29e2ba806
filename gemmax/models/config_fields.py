"""Types and ranges of every ModelConfig field, checked when a config is made."""

from __future__ import annotations

import math

from gemmax.errors import GemmaxError
from gemmax.models.layers import ACTIVATIONS
from gemmax.ops.attention import IMPLS

DTYPES = ("float32", "bfloat16", "float16")


def check_fields(config) -> None:
  """Types and ranges of every field: a config.json with num_key_value_heads 0 or an
  eos_token_id written as a string fails here, naming the field, not deep inside a layer."""

  def bad(name, want):
    raise GemmaxError(f"ModelConfig.{name} must be {want}, got {getattr(config, name)!r}")

  for name in (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
  ):
    if not is_int(getattr(config, name)) or getattr(config, name) < 1:
      bad(name, "an integer >= 1")
  if config.sliding_window is not None and (
    not is_int(config.sliding_window) or config.sliding_window < 1
  ):
    bad("sliding_window", "an integer >= 1 or None")
  for name, optional in (
    ("rope_theta", False),
    ("rms_norm_eps", False),
    ("query_pre_attn_scalar", True),
    ("attn_logit_softcapping", True),
    ("final_logit_softcapping", True),
  ):
    v = getattr(config, name)
    if not (optional and v is None) and not (is_number(v) and math.isfinite(v) and v > 0):
      bad(name, "a finite number > 0" + (" or None" if optional else ""))
  for name in ("bos_token_id", "pad_token_id"):
    v = getattr(config, name)
    if v is not None and (not is_int(v) or v < 0):
      bad(name, "a token id (an integer >= 0) or None")
  eos = config.eos_token_id
  if eos is not None and not (
    (is_int(eos) and eos >= 0)
    or (isinstance(eos, tuple) and all(is_int(e) and e >= 0 for e in eos))
  ):
    bad("eos_token_id", "a token id, a list of token ids, or None")
  if config.sliding_window_pattern is not None and (
    not is_int(config.sliding_window_pattern) or config.sliding_window_pattern < 1
  ):
    bad("sliding_window_pattern", "an integer >= 1 or None")
  v = config.rope_local_base_freq
  if v is not None and not (is_number(v) and math.isfinite(v) and v > 0):
    bad("rope_local_base_freq", "a finite number > 0 or None")
  for name in (
    "tie_word_embeddings",
    "attention_bias",
    "norm_offset",
    "post_norms",
    "qk_norm",
    "scale_embeddings",
  ):
    if not isinstance(getattr(config, name), bool):
      bad(name, "true or false")
  for name in ("dtype", "param_dtype"):
    if getattr(config, name) not in DTYPES:
      bad(name, f"one of {', '.join(DTYPES)}")
  if config.attn_impl not in IMPLS:
    bad("attn_impl", f"one of {', '.join(IMPLS)}")
  if config.hidden_activation not in ACTIVATIONS:
    bad("hidden_activation", f"one of {', '.join(ACTIVATIONS)}")


def is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)
