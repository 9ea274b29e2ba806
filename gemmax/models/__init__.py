"""Gemma 2 and Llama in Flax NNX: config presets, layers, attention, transformer."""

from gemmax.models.config import ModelConfig, RopeScaling
from gemmax.models.presets import PRESETS, PUBLISHED_PARAMS
from gemmax.models.sizing import abstract_model, analytic_flops, param_count
from gemmax.models.sharded import create_sharded
from gemmax.models.transformer import Transformer, segment_positions

__all__ = [
  "ModelConfig",
  "RopeScaling",
  "Transformer",
  "PRESETS",
  "PUBLISHED_PARAMS",
  "abstract_model",
  "param_count",
  "analytic_flops",
  "segment_positions",
  "create_sharded",
]
