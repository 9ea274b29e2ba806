"""ModelConfig: one frozen dataclass for both families, field names as in HF config.json."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

from gemmax.errors import GemmaxError
from gemmax.models.config_fields import check_fields, is_int
from gemmax.models.presets import PRESETS

FAMILIES = ("gemma2", "llama")
_GGUF_ARCH = {"llama": "llama", "gemma2": "gemma2"}  # GGUF general.architecture -> family
_HF_ARCH = {"Gemma2ForCausalLM": "gemma2", "LlamaForCausalLM": "llama"}
_HF_MODEL_TYPE = {"gemma2": "gemma2", "llama": "llama"}
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """HF `rope_scaling`: linear (positions / factor) or llama3 (per-frequency smoothing)."""

  rope_type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  @classmethod
  def from_dict(cls, d: dict) -> "RopeScaling":
    d = dict(d)
    kind = d.pop("rope_type", d.pop("type", "default"))
    if kind not in ROPE_TYPES:
      raise GemmaxError(
        f"rope_scaling.rope_type {kind!r} is not supported (supported: {ROPE_TYPES})"
      )
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(rope_type=kind, **{k: v for k, v in d.items() if k in known})

  def to_dict(self) -> dict:
    if self.rope_type == "linear":
      return {"rope_type": "linear", "factor": self.factor}
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a Gemma 2 or Llama model plus how to run it (dtype, attention impl, remat)."""

  family: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: Optional[RopeScaling] = None
  rms_norm_eps: float = 1e-6
  sliding_window: Optional[int] = None
  query_pre_attn_scalar: Optional[float] = None
  attn_logit_softcapping: Optional[float] = None
  final_logit_softcapping: Optional[float] = None
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 8192
  hidden_activation: str = "silu"
  attention_bias: bool = False
  bos_token_id: Optional[int] = None
  eos_token_id: Any = None
  pad_token_id: Optional[int] = None
  # How to run it (not part of HF config.json).
  dtype: str = "float32"  # activation / compute dtype
  param_dtype: str = "float32"  # storage dtype of the base weights
  attn_impl: str = "auto"
  remat: str = "none"  # none | full | save_dots

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise GemmaxError(f"ModelConfig.family {self.family!r} is not one of {FAMILIES}")
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", RopeScaling.from_dict(self.rope_scaling))
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    check_fields(self)
    if self.num_attention_heads % self.num_key_value_heads:
      raise GemmaxError(
        f"num_attention_heads {self.num_attention_heads} is not a multiple of "
        f"num_key_value_heads {self.num_key_value_heads}"
      )
    if self.remat not in ("none", "full", "save_dots"):
      raise GemmaxError(f"ModelConfig.remat {self.remat!r} is not one of none|full|save_dots")

  # --- construction -------------------------------------------------------------------------
  @classmethod
  def preset(cls, name: str, **overrides) -> "ModelConfig":
    if name not in PRESETS:
      raise GemmaxError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return cls(**{**PRESETS[name], **overrides})

  @classmethod
  def from_hf(cls, config: dict | str | os.PathLike, **overrides) -> "ModelConfig":
    """From an HF config dict, a config.json path, or a checkpoint directory holding one."""
    source = "config"
    if not isinstance(config, dict):
      path = os.fspath(config)
      if os.path.isdir(path):
        path = os.path.join(path, "config.json")
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such config.json")
      source = path
      with open(path, encoding="utf-8") as f:
        try:
          config = json.load(f)
        except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
          raise GemmaxError(f"{path}: not a valid JSON config ({e})") from None
      if not isinstance(config, dict):
        raise GemmaxError(f"{path}: expected a JSON object, got {type(config).__name__}")
    archs = config.get("architectures") or []
    family = next((_HF_ARCH[a] for a in archs if a in _HF_ARCH), None)
    family = family or _HF_MODEL_TYPE.get(config.get("model_type", ""))
    if family is None:
      raise GemmaxError(
        f"{source}: unsupported architecture {archs or config.get('model_type')!r}; "
        f"gemmax supports {sorted(_HF_ARCH)}"
      )
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in config.items() if k in names and k not in ("dtype",)}
    rope = config.get("rope_parameters")  # transformers >= 5 keeps theta and scaling together
    if isinstance(rope, dict):
      kw["rope_theta"] = rope.get("rope_theta", kw.get("rope_theta", 10000.0))
      kind = rope.get("rope_type", rope.get("type", "default"))
      kw["rope_scaling"] = (
        None if kind == "default" else {k: v for k, v in rope.items() if k != "rope_theta"}
      )
    elif (
      isinstance(kw.get("rope_scaling"), dict)
      and kw["rope_scaling"].get("rope_type", kw["rope_scaling"].get("type")) == "default"
    ):
      kw["rope_scaling"] = None
    kw["family"] = family
    if is_int(kw.get("pad_token_id")) and kw["pad_token_id"] < 0:  # some configs write -1: none
      kw["pad_token_id"] = None
    lacking = [
      k
      for k in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
      )
      if k not in config
    ]
    if lacking:
      raise GemmaxError(f"{source}: lacks {', '.join(lacking)}")
    if kw.get("head_dim") is None:
      kw["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    kw.setdefault("num_key_value_heads", config["num_attention_heads"])
    if family == "gemma2":
      kw["hidden_activation"] = config.get("hidden_activation") or config.get(
        "hidden_act", "gelu_pytorch_tanh"
      )
      kw.setdefault("tie_word_embeddings", True)
    else:
      kw["hidden_activation"] = config.get("hidden_act", "silu")
      kw.pop("sliding_window", None)
      kw.pop("query_pre_attn_scalar", None)
    if config.get("torch_dtype") or config.get("dtype"):
      kw["param_dtype"] = str(config.get("torch_dtype") or config.get("dtype"))
    try:
      return cls(**{**kw, **overrides})
    except GemmaxError as e:  # name the file the bad value came from
      raise GemmaxError(f"{source}: {e}") from None

  @classmethod
  def from_gguf(
    cls,
    meta: Mapping[str, Any],
    tensor_shapes: Mapping[str, tuple],
    rope_factors=None,
    *,
    source: str = "GGUF file",
    **overrides,
  ) -> "ModelConfig":
    """From a GGUF file's metadata (llama.cpp key names), its tensors' numpy-order shapes and,
    when the file has one, its `rope_freqs` tensor (llama3 RoPE scaling as per-frequency
    divisors). Defaults are llama.cpp's where the file is silent."""
    arch = meta.get("general.architecture")
    if arch not in _GGUF_ARCH:
      raise GemmaxError(
        f"{source}: GGUF architecture {arch!r} is not supported (supported: "
        f"{', '.join(_GGUF_ARCH)}; gemma3 lands with Gemma 3 support)"
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
      rms_norm_eps=_f32(
        key("attention.layer_norm_rms_epsilon", 1e-5 if family == "llama" else 1e-6)
      ),
      max_position_embeddings=int(key("context_length", 8192)),
      tie_word_embeddings="output.weight" not in tensor_shapes,
      bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
      eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
      pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )
    if family == "gemma2":
      # llama.cpp's Gemma 2 graph: the 27B (46 blocks) scales queries by hidden / heads, the
      # others by head_dim; the file does not store query_pre_attn_scalar.
      scalar = hidden // heads if kw["num_hidden_layers"] == 46 else head_dim
      kw.update(
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=scalar,
        sliding_window=key("attention.sliding_window", 4096),
        attn_logit_softcapping=_f32(key("attn_logit_softcapping", 50.0)),
        final_logit_softcapping=_f32(key("final_logit_softcapping", 30.0)),
      )
    kw["rope_scaling"] = _gguf_rope_scaling(key, kw, rope_factors, source)
    try:
      return cls(**{**kw, **overrides})
    except GemmaxError as e:  # name the file the bad value came from
      raise GemmaxError(f"{source}: {e}") from None

  def to_gguf(self) -> tuple[str, dict]:
    """(architecture, {key: value}) of the model metadata llama.cpp reads; the llama3 RoPE factors
    go in a `rope_freqs` tensor (see `rope_factors`)."""
    arch = {v: k for k, v in _GGUF_ARCH.items()}[self.family]
    out = {
      "context_length": self.max_position_embeddings,
      "embedding_length": self.hidden_size,
      "block_count": self.num_hidden_layers,
      "feed_forward_length": self.intermediate_size,
      "attention.head_count": self.num_attention_heads,
      "attention.head_count_kv": self.num_key_value_heads,
      "attention.layer_norm_rms_epsilon": self.rms_norm_eps,
      "rope.freq_base": self.rope_theta,
      "attention.key_length": self.head_dim,
      "attention.value_length": self.head_dim,
    }
    if self.family == "llama":
      out.update({"vocab_size": self.vocab_size, "rope.dimension_count": self.head_dim})
    else:
      scalar = (
        self.hidden_size // self.num_attention_heads
        if self.num_hidden_layers == 46
        else self.head_dim
      )
      if float(self.query_pre_attn_scalar or self.head_dim) != float(scalar):
        raise GemmaxError(
          f"query_pre_attn_scalar {self.query_pre_attn_scalar} cannot be written to "
          f"GGUF: llama.cpp derives {scalar} for a Gemma 2 model of this shape"
        )
      out.update(
        {
          "attention.sliding_window": self.sliding_window,
          "attn_logit_softcapping": self.attn_logit_softcapping,
          "final_logit_softcapping": self.final_logit_softcapping,
        }
      )
      out = {k: v for k, v in out.items() if v is not None}
    if self.rope_scaling is not None and self.rope_scaling.rope_type == "linear":
      out.update({"rope.scaling.type": "linear", "rope.scaling.factor": self.rope_scaling.factor})
    return arch, out

  def rope_factors(self):
    """llama.cpp's `rope_freqs` tensor for llama3 scaling (per-frequency divisors), else None."""
    if self.rope_scaling is None or self.rope_scaling.rope_type != "llama3":
      return None
    import numpy as np
    from gemmax.models.rope import inverse_frequencies

    plain = inverse_frequencies(self.head_dim, self.rope_theta)
    return (plain / inverse_frequencies(self.head_dim, self.rope_theta, self.rope_scaling)).astype(
      np.float32
    )

  def to_hf(self) -> dict:
    """HF config.json contents that transformers loads as the same architecture."""
    skip = {
      "family",
      "dtype",
      "param_dtype",
      "attn_impl",
      "remat",
      "hidden_activation",
      "rope_scaling",
    }
    out = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
    out["rope_scaling"] = self.rope_scaling.to_dict() if self.rope_scaling else None
    out["rope_parameters"] = {
      "rope_theta": self.rope_theta,
      **(out["rope_scaling"] or {"rope_type": "default"}),
    }
    if isinstance(out["eos_token_id"], tuple):
      out["eos_token_id"] = list(out["eos_token_id"])
    out["torch_dtype"] = self.param_dtype
    if self.family == "gemma2":
      out.update(
        architectures=["Gemma2ForCausalLM"],
        model_type="gemma2",
        hidden_activation=self.hidden_activation,
        hidden_act=self.hidden_activation,
      )
    else:
      out.update(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_act=self.hidden_activation,
        mlp_bias=False,
      )
      for k in (
        "sliding_window",
        "query_pre_attn_scalar",
        "attn_logit_softcapping",
        "final_logit_softcapping",
      ):
        out.pop(k)
    return out

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  # --- derived ------------------------------------------------------------------------------
  def layer_window(self, layer: int) -> Optional[int]:
    """Gemma 2 uses the sliding window on even layers (0, 2, ...), global attention on odd."""
    if self.family == "gemma2" and self.sliding_window is not None and layer % 2 == 0:
      return self.sliding_window
    return None

  @property
  def query_scale(self) -> float:
    scalar = self.query_pre_attn_scalar if self.family == "gemma2" else None
    return float(scalar if scalar is not None else self.head_dim) ** -0.5


def _f32(x):
  """A GGUF float32 value as the decimal it was written from (1e-05, not 9.99999974738e-06)."""
  import numpy as np

  return None if x is None else float(np.format_float_scientific(np.float32(x), unique=True))


def _gguf_rope_scaling(key, kw, rope_factors, source):
  """RoPE scaling from `{arch}.rope.scaling.*` or llama.cpp's `rope_freqs` factors (llama3)."""
  kind = key("rope.scaling.type", "none")
  if rope_factors is not None:
    import numpy as np

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
