"""Presets, parameter counts (no allocation), config.json parsing, sharded checkpoints."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

import jax.numpy as jnp

from gemmax.convert import load_hf, save_hf
from gemmax.models import PRESETS, PUBLISHED_PARAMS, ModelConfig, param_count
from hf_models import gemma2_config, make_hf_model, save_hf_model


@pytest.mark.parametrize(
  "name",
  ["gemma2-2b", "gemma2-9b", "gemma2-27b", "llama2-7b", "llama3-8b", "llama3.2-1b", "llama3.2-3b"],
)
def test_param_count_matches_published_total(name):
  assert param_count(ModelConfig.preset(name)) == PUBLISHED_PARAMS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama3.1-8b", "llama3.1-70b"])
def test_param_count_large(name):
  assert param_count(ModelConfig.preset(name)) == PUBLISHED_PARAMS[name]


def test_presets_follow_published_configs():
  g27 = ModelConfig.preset("gemma2-27b")
  assert g27.query_scale == 144**-0.5 and g27.head_dim == 128
  assert [g27.layer_window(i) for i in range(4)] == [4096, None, 4096, None]
  l31 = ModelConfig.preset("llama3.1-8b")
  assert l31.rope_scaling.factor == 8 and l31.max_position_embeddings == 131072
  assert ModelConfig.preset("llama3.2-1b").rope_scaling.factor == 32
  assert ModelConfig.preset("llama3.2-1b").tie_word_embeddings
  assert all(n in PRESETS for n in ("gemma2-tiny", "llama3-tiny"))


def test_from_hf_matches_transformers_config(tmp_path):
  cfg = transformers.Gemma2Config(**gemma2_config(query_pre_attn_scalar=144).to_dict())
  cfg.save_pretrained(tmp_path)
  c = ModelConfig.from_hf(str(tmp_path))
  assert (c.family, c.head_dim, c.sliding_window, c.query_pre_attn_scalar) == ("gemma2", 24, 8, 144)
  assert ModelConfig.from_hf(c.to_hf()) == c


def test_unknown_preset_and_bad_fields():
  with pytest.raises(ValueError, match="unknown preset 'gemma3'"):
    ModelConfig.preset("gemma3")
  with pytest.raises(ValueError, match="not a multiple"):
    ModelConfig.preset("llama3-tiny", num_key_value_heads=3)
  with pytest.raises(FileNotFoundError, match="no such config.json"):
    ModelConfig.from_hf("/nonexistent")


def test_sharded_checkpoints_both_ways(tmp_path):
  """HF's sharded save (index.json) loads; save_hf shards with an index that HF loads."""
  hf = make_hf_model(gemma2_config())
  hf.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
  assert os.path.exists(tmp_path / "hf" / "model.safetensors.index.json")
  model = load_hf(str(tmp_path / "hf"))
  ids = np.random.RandomState(0).randint(0, 256, (1, 12))
  with torch.no_grad():
    ref = hf(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), ref, atol=1e-4)
  save_hf(model, str(tmp_path / "gx"), max_shard_bytes=100_000)
  with open(tmp_path / "gx" / "model.safetensors.index.json") as f:
    assert len(set(json.load(f)["weight_map"].values())) > 1
  hf2 = transformers.AutoModelForCausalLM.from_pretrained(
    str(tmp_path / "gx"), attn_implementation="eager"
  ).float()
  with torch.no_grad():
    np.testing.assert_array_equal(hf2(torch.tensor(ids)).logits.numpy(), ref)
