"""Tiny random HF reference models (torch, float32, eager attention) for fidelity tests."""

from __future__ import annotations

import torch
import transformers


def gemma2_config(**kw):
  base = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=24,
    sliding_window=8,
    query_pre_attn_scalar=24,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=1,
  )
  base.update(kw)
  return transformers.Gemma2Config(**base)


def gemma3_config(**kw):
  """A tiny odd-shaped Gemma 3 text model: 7 layers (five sliding, one global, one sliding),
  window 8, MQA, head_dim 24 != hidden / heads, linear RoPE scaling 8 on the global layers."""
  base = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=7,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=24,
    sliding_window=8,
    query_pre_attn_scalar=20,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    rope_parameters={
      "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
      "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=1,
  )
  base.update(kw)
  return transformers.Gemma3TextConfig(**base)


def llama_config(**kw):
  base = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
  )
  base.update(kw)
  return transformers.LlamaConfig(**base)


def make_hf_model(config, seed=0, scale_norms=True):
  """A random HF causal LM in float32 with eager attention; norms randomised too."""
  torch.manual_seed(seed)
  config._attn_implementation = "eager"
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  model = model.float().eval()
  if scale_norms:  # default norm weights are all equal; randomise so a wrong norm shows
    with torch.no_grad():
      for name, p in model.named_parameters():
        if "norm" in name:
          p.add_(0.1 * torch.randn_like(p))
  return model


def save_hf_model(model, path):
  model.save_pretrained(path, safe_serialization=True)
  return path


def make_peft_model(hf, *, dora: bool, rslora: bool = False):
  """A peft LoRA / DoRA (rank 4, alpha 16, every linear layer) around a copy of `hf`, with
  random adapters (and DoRA magnitudes scaled off their initial norms), seeded."""
  import copy

  import peft

  torch.manual_seed(3)
  lcfg = peft.LoraConfig(
    r=4,
    lora_alpha=16,
    target_modules="all-linear",
    use_dora=dora,
    use_rslora=rslora,
    init_lora_weights=False,
    task_type="CAUSAL_LM",
  )
  pm = peft.get_peft_model(copy.deepcopy(hf), lcfg).eval()
  if dora:
    with torch.no_grad():
      for name, p in pm.named_parameters():
        if "lora_magnitude_vector" in name:
          p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
  return pm
