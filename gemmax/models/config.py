"""ModelConfig: one frozen dataclass for both families, field names as in HF config.json."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

from gemmax.errors import GemmaxError
from gemmax.models.config_fields import check_fields, is_int
from gemmax.models.presets import PRESETS

FAMILIES = ("gemma2", "gemma3", "llama")
_HF_ARCH = {
  "Gemma2ForCausalLM": "gemma2",
  "Gemma3ForCausalLM": "gemma3",
  "Gemma3ForConditionalGeneration": "gemma3",
  "LlamaForCausalLM": "llama",
}
_HF_MODEL_TYPE = {"gemma2": "gemma2", "gemma3_text": "gemma3", "gemma3": "gemma3", "llama": "llama"}
ROPE_TYPES = ("default", "linear", "llama3")
LAYER_TYPES = ("sliding_attention", "full_attention")
SLIDING, FULL = LAYER_TYPES

# The architecture each family name stands for, as resolved fields (see ModelConfig): a field the
# caller leaves None takes its family's value once, in __post_init__; nothing else reads `family`.
FAMILY_DEFAULTS = {
  "gemma2": dict(
    norm_offset=True,
    post_norms=True,
    qk_norm=False,
    scale_embeddings=True,
    sliding_window_pattern=2,
  ),
  "gemma3": dict(
    norm_offset=True,
    post_norms=True,
    qk_norm=True,
    scale_embeddings=True,
    sliding_window_pattern=6,
  ),
  "llama": dict(
    norm_offset=False,
    post_norms=False,
    qk_norm=False,
    scale_embeddings=False,
    sliding_window_pattern=None,
  ),
}
# Gemma3TextConfig's defaults: the text_config of a Gemma3ForConditionalGeneration config.json
# on the Hub names only the fields that differ from them.
_GEMMA3_TEXT_DEFAULTS = dict(
  vocab_size=262_208,
  hidden_size=2304,
  intermediate_size=9216,
  num_hidden_layers=26,
  num_attention_heads=8,
  num_key_value_heads=4,
  head_dim=256,
  rope_theta=1_000_000.0,
  rope_local_base_freq=10_000.0,
  query_pre_attn_scalar=256,
  sliding_window=4096,
  max_position_embeddings=131_072,
  rms_norm_eps=1e-6,
  bos_token_id=2,
  eos_token_id=1,
  pad_token_id=0,
)


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
  """Architecture of a Gemma 2 / Gemma 3 / Llama model plus how to run it (dtype, attention impl,
  remat).

  Every architecture difference is a field. `family` names the architecture for export
  (config.json / GGUF names) and supplies defaults: fields left None (norm_offset, post_norms,
  qk_norm, scale_embeddings, sliding_window_pattern) take its values once, at construction.
  - norm_offset: RMSNorm scales by (1 + w) in float32 (Gemma) instead of w after the cast (Llama).
  - post_norms: norms after attention and MLP too (Gemma's pre + post "sandwich").
  - qk_norm: RMSNorm over head_dim on queries and keys before RoPE (Gemma 3).
  - scale_embeddings: embeddings times sqrt(hidden_size), cast to the activation dtype first.
  - layer_types: "sliding_attention" | "full_attention" per layer; when None, every
    `sliding_window_pattern`-th layer (1-based) is global and the others sliding, or every layer
    global where there is no pattern or no window.
  - rope_local_base_freq / rope_local_scaling: RoPE of the sliding layers when set (Gemma 3: base
    10,000, no scaling); otherwise they share rope_theta / rope_scaling with the global layers.
  - soft-caps and query_pre_attn_scalar: None or a value, used as given.
  """

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
  layer_types: Optional[tuple] = None
  sliding_window_pattern: Optional[int] = None
  rope_local_base_freq: Optional[float] = None
  rope_local_scaling: Optional[RopeScaling] = None
  norm_offset: Optional[bool] = None
  post_norms: Optional[bool] = None
  qk_norm: Optional[bool] = None
  scale_embeddings: Optional[bool] = None
  # How to run it (not part of HF config.json).
  dtype: str = "float32"  # activation / compute dtype
  param_dtype: str = "float32"  # storage dtype of the base weights
  attn_impl: str = "auto"
  remat: str = "none"  # none | full | save_dots

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise GemmaxError(f"ModelConfig.family {self.family!r} is not one of {FAMILIES}")
    for name, value in FAMILY_DEFAULTS[self.family].items():
      if getattr(self, name) is None:
        object.__setattr__(self, name, value)
    for name in ("rope_scaling", "rope_local_scaling"):
      if isinstance(getattr(self, name), dict):
        object.__setattr__(self, name, RopeScaling.from_dict(getattr(self, name)))
    if self.layer_types is not None:
      object.__setattr__(self, "layer_types", tuple(self.layer_types))
      if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= set(
        LAYER_TYPES
      ):
        raise GemmaxError(
          f"ModelConfig.layer_types must list {self.num_hidden_layers} entries of "
          f"{LAYER_TYPES}, got {self.layer_types!r}"
        )
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
    outer_dtype = config.get("torch_dtype") or config.get("dtype")
    if isinstance(config.get("text_config"), dict):  # Gemma3ForConditionalGeneration: text tower
      config = config["text_config"]
    if family == "gemma3":
      config = {**_GEMMA3_TEXT_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    names = {f.name for f in dataclasses.fields(cls)} - {"family", "norm_offset", "post_norms"}
    names -= {"qk_norm", "scale_embeddings", "rope_local_scaling"}
    kw = {k: v for k, v in config.items() if k in names and k not in ("dtype",)}
    rope = config.get("rope_parameters")  # transformers >= 5 keeps theta and scaling together
    if isinstance(rope, dict) and isinstance(rope.get("full_attention"), dict):
      # per layer type (Gemma 3): global RoPE and the sliding layers' own
      kw["rope_theta"], kw["rope_scaling"] = _hf_rope(rope["full_attention"], kw)
      if isinstance(rope.get("sliding_attention"), dict):
        local = rope["sliding_attention"]
        kw["rope_local_base_freq"] = local.get("rope_theta", kw.get("rope_local_base_freq"))
        kw["rope_local_scaling"] = _hf_rope(local, kw)[1]
    elif isinstance(rope, dict):
      kw["rope_theta"], kw["rope_scaling"] = _hf_rope(rope, kw)
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
    if family in ("gemma2", "gemma3"):
      kw["hidden_activation"] = config.get("hidden_activation") or config.get(
        "hidden_act", "gelu_pytorch_tanh"
      )
      kw.setdefault("tie_word_embeddings", True)
    else:
      kw["hidden_activation"] = config.get("hidden_act", "silu")
      for k in ("sliding_window", "query_pre_attn_scalar", "layer_types"):
        kw.pop(k, None)
      for k in ("attn_logit_softcapping", "final_logit_softcapping"):
        kw.pop(k, None)
    if kw.get("layer_types") is not None:
      kw.pop("sliding_window_pattern", None)
    dtype = config.get("torch_dtype") or config.get("dtype") or outer_dtype
    if dtype:
      kw["param_dtype"] = str(dtype)
    try:
      return cls(**{**kw, **overrides})
    except GemmaxError as e:  # name the file the bad value came from
      raise GemmaxError(f"{source}: {e}") from None

  @classmethod
  def from_gguf(cls, meta, tensor_shapes, rope_factors=None, *, source="GGUF file", **overrides):
    """From a GGUF file's metadata, its tensors' shapes and its `rope_freqs` tensor, if any
    (gemmax.models.config_gguf)."""
    from gemmax.models.config_gguf import config_kwargs

    try:
      return cls(**{**config_kwargs(meta, tensor_shapes, rope_factors, source), **overrides})
    except GemmaxError as e:  # name the file the bad value came from
      raise GemmaxError(f"{source}: {e}") from None

  def to_gguf(self) -> tuple[str, dict]:
    """(architecture, {key: value}) of the metadata llama.cpp reads (gemmax.models.config_gguf)."""
    from gemmax.models.config_gguf import gguf_metadata

    return gguf_metadata(self)

  def rope_factors(self):
    """llama.cpp's `rope_freqs` tensor for llama3 scaling (per-frequency divisors), else None."""
    from gemmax.models.config_gguf import rope_factors

    return rope_factors(self)

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
      "rope_local_scaling",
      "norm_offset",
      "post_norms",
      "qk_norm",
      "scale_embeddings",
      "sliding_window_pattern",
    }
    out = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
    out["layer_types"] = [self.layer_type(i) for i in range(self.num_hidden_layers)]
    out["rope_scaling"] = self.rope_scaling.to_dict() if self.rope_scaling else None
    out["rope_parameters"] = {
      "rope_theta": self.rope_theta,
      **(out["rope_scaling"] or {"rope_type": "default"}),
    }
    if self.rope_local_base_freq is not None:  # per layer type, as Gemma3TextConfig keeps it
      local = self.rope_local_scaling.to_dict() if self.rope_local_scaling else None
      out["rope_parameters"] = {
        "full_attention": out["rope_parameters"],
        "sliding_attention": {
          "rope_theta": self.rope_local_base_freq,
          **(local or {"rope_type": "default"}),
        },
      }
    if isinstance(out["eos_token_id"], tuple):
      out["eos_token_id"] = list(out["eos_token_id"])
    out["torch_dtype"] = self.param_dtype
    out.pop("rope_local_base_freq")
    if self.family in ("gemma2", "gemma3"):
      out.update(
        architectures=["Gemma2ForCausalLM" if self.family == "gemma2" else "Gemma3ForCausalLM"],
        model_type="gemma2" if self.family == "gemma2" else "gemma3_text",
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
        "layer_types",
      ):
        out.pop(k)
    return out

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  # --- derived ------------------------------------------------------------------------------
  def layer_type(self, layer: int) -> str:
    """ "sliding_attention" or "full_attention": `layer_types`, else the pattern (Gemma 2: even
    layers 0, 2, ... slide; Gemma 3: five of every six), else global."""
    if self.layer_types is not None:
      return self.layer_types[layer]
    pattern = self.sliding_window_pattern
    if self.sliding_window is not None and pattern and (layer + 1) % pattern:
      return SLIDING
    return FULL

  def layer_window(self, layer: int) -> Optional[int]:
    """The sliding window of layer `layer`, None for a global layer."""
    return self.sliding_window if self.layer_type(layer) == SLIDING else None

  def layer_rope(self, layer: int) -> tuple:
    """(theta, RopeScaling or None) of layer `layer`: the local RoPE on sliding layers when the
    config has one, else the global one."""
    if self.layer_type(layer) == SLIDING and self.rope_local_base_freq is not None:
      return float(self.rope_local_base_freq), self.rope_local_scaling
    return self.rope_theta, self.rope_scaling

  @property
  def query_scale(self) -> float:
    scalar = self.query_pre_attn_scalar
    return float(scalar if scalar is not None else self.head_dim) ** -0.5


def _hf_rope(rope: dict, kw: dict) -> tuple:
  """(theta, scaling dict or None) of one HF `rope_parameters` entry."""
  kind = rope.get("rope_type", rope.get("type", "default"))
  theta = rope.get("rope_theta", kw.get("rope_theta", 10000.0))
  return theta, None if kind == "default" else {k: v for k, v in rope.items() if k != "rope_theta"}
