"""The committed checkpoints/gemmax-tiny: size, architecture, model card, and the same logits in
gemmax and in HF transformers."""

import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(ROOT, "checkpoints", "gemmax-tiny")


def test_size_files_and_card():
  names = set(os.listdir(CKPT))
  assert {"config.json", "model.safetensors", "tokenizer.model", "README.md"} <= names
  total = sum(os.path.getsize(os.path.join(CKPT, n)) for n in names)
  assert total <= 30e6, total
  card = open(os.path.join(CKPT, "README.md"), encoding="utf-8").read()
  for needle in ("## Data", "## Training", "perplexity", "steps"):
    assert needle in card


def test_gemma2_architecture_and_tokenizer():
  from gemmax.data import load_tokenizer
  from gemmax.models import ModelConfig

  cfg = ModelConfig.from_hf(CKPT)
  assert cfg.family == "gemma2" and cfg.num_key_value_heads < cfg.num_attention_heads
  assert cfg.sliding_window and cfg.attn_logit_softcapping and cfg.final_logit_softcapping
  assert load_tokenizer(CKPT).vocab_size == cfg.vocab_size


def test_logits_match_transformers():
  import torch
  from transformers import AutoModelForCausalLM
  from gemmax.convert import load_hf
  from gemmax.data import load_tokenizer

  tok = load_tokenizer(CKPT)
  ids = tok.encode("Sherlock Holmes looked at the letter and said nothing. " * 4, add_bos=True)
  ours = np.asarray(load_hf(CKPT, dtype="float32")(np.asarray([ids], np.int32)))
  ref = AutoModelForCausalLM.from_pretrained(
    CKPT, torch_dtype=torch.float32, attn_implementation="eager"
  )
  with torch.no_grad():
    theirs = ref(torch.tensor([ids])).logits.numpy()
  assert np.max(np.abs(ours - theirs)) < 1e-3
  assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.99
