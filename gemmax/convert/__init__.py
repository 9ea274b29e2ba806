"""Checkpoint conversion: one `load(source)` for HF safetensors, GGUF files and registry names;
HF and GGUF out (`save_hf`, `save_gguf`); Meta Llama and Kaggle/Orbax Gemma 2 in."""

from gemmax.convert.gguf_io import config_from_gguf, load_gguf, save_gguf
from gemmax.convert.hf import load_hf, save_hf
from gemmax.convert.kaggle import load_kaggle
from gemmax.convert.load import load, model_file
from gemmax.convert.meta import load_meta

__all__ = [
  "load",
  "model_file",
  "load_hf",
  "save_hf",
  "load_gguf",
  "save_gguf",
  "config_from_gguf",
  "load_meta",
  "load_kaggle",
]
