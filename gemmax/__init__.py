"""gemmax: Gemma 2 and Llama in JAX/Flax NNX — exact models, Pallas local-global attention, sharding,
LoRA/DoRA/QLoRA fine-tuning, distillation, sampling and evaluation.

Subpackages load on first use (`gemmax.models`, `gemmax.peft`, ...), so `import gemmax` stays cheap
and does not initialise JAX.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
  "convert",
  "data",
  "distill",
  "evals",
  "fetch",
  "models",
  "ops",
  "peft",
  "quant",
  "sampling",
  "train",
  "sharding",
  "distributed",
)


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"gemmax.{name}")
  raise AttributeError(f"module 'gemmax' has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), *_SUBMODULES])
