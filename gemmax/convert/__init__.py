"""Checkpoint conversion: HF safetensors <-> gemmax, Meta Llama, Kaggle/Orbax Gemma 2."""
from gemmax.convert.hf import load_hf, save_hf

__all__ = ["load_hf", "save_hf"]
