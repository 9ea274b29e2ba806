"""Parameter-efficient fine-tuning: LoRA, DoRA, NF4 4-bit bases (QLoRA/QDoRA), merge, and
adapters in the HF PEFT on-disk format."""

from gemmax.peft.adapter_io import fingerprint, load_adapter, save_adapter
from gemmax.peft.apply import apply, merge, quantize_model
from gemmax.peft.lora import (
  LoRALinear,
  LoRAParam,
  adapters_disabled,
  has_adapters,
  trainable_filter,
)
from gemmax.quant.nf4 import NF4_CODE, NF4Data, NF4Linear

__all__ = [
  "apply",
  "merge",
  "quantize_model",
  "save_adapter",
  "load_adapter",
  "fingerprint",
  "trainable_filter",
  "has_adapters",
  "adapters_disabled",
  "LoRAParam",
  "LoRALinear",
  "NF4Linear",
  "NF4Data",
  "NF4_CODE",
]
