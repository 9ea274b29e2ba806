"""Quantized weights: GGUF files (llama.cpp's block types, read through the `gguf` package)."""

from gemmax.quant.gguf_file import GGUFFile

__all__ = ["GGUFFile"]
