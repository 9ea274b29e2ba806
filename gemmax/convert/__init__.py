"""Checkpoint conversion: HF safetensors <-> gemmax, Meta Llama, Kaggle/Orbax Gemma 2."""
from gemmax.convert.hf import load_hf, save_hf
from gemmax.convert.kaggle import load_kaggle
from gemmax.convert.meta import load_meta

__all__ = ["load_hf", "save_hf", "load_meta", "load_kaggle"]
