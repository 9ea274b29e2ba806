"""Quantized weights: GGUF files (llama.cpp's block types, read through the `gguf` package) and
4-bit NF4 (QLoRA's NormalFloat4 with double quantization, the frozen base of QLoRA/QDoRA)."""

from gemmax.quant.gguf_file import GGUFFile
from gemmax.quant.nf4 import NF4_CODE, NF4Data, NF4Linear

__all__ = ["GGUFFile", "NF4_CODE", "NF4Data", "NF4Linear"]
