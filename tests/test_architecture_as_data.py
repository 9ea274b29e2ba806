"""Architecture as data: outside models/ and convert/ nothing branches on a family name, and the
model's parts follow the resolved fields, not the family."""

import os
import re

import numpy as np
from flax import nnx

from gemmax.models import ModelConfig, Transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRANCH = re.compile(
  r"family\s*(==|!=|\bin\b|\bnot in\b)|[\"'](gemma2|gemma3|llama)[\"']\s*(==|!=|in\b)"
)


def test_no_family_branches_outside_models_and_convert():
  found = []
  for top in ("gemmax", "experiments"):
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
      rel = os.path.relpath(dirpath, ROOT)
      if rel.startswith(("gemmax/models", "gemmax/convert")):
        continue
      for f in files:
        if f.endswith(".py"):
          path = os.path.join(dirpath, f)
          for i, line in enumerate(open(path, encoding="utf-8"), 1):
            if BRANCH.search(line.split("#")[0]):
              found.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
  assert not found, "\n".join(found)


def test_fields_not_family_decide_the_parts():
  """A Llama-family config given Gemma 3's fields builds Gemma 3's parts and numbers."""
  g3 = ModelConfig.preset("gemma3-tiny", rope_scaling=None)
  fields = {
    k: getattr(g3, k)
    for k in (
      "norm_offset",
      "post_norms",
      "qk_norm",
      "scale_embeddings",
      "sliding_window_pattern",
      "rope_local_base_freq",
      "hidden_activation",
    )
  }
  llama = g3.replace(family="llama", **fields)
  a, b = Transformer(g3, rngs=nnx.Rngs(0)), Transformer(llama, rngs=nnx.Rngs(0))
  assert hasattr(b.layers[0].self_attn, "q_norm") and hasattr(
    b.layers[0], "post_feedforward_layernorm"
  )
  ids = np.random.RandomState(0).randint(0, 256, (1, 20))
  np.testing.assert_array_equal(np.asarray(a(ids)), np.asarray(b(ids)))
  plain = Transformer(ModelConfig.preset("llama3-tiny"), rngs=nnx.Rngs(0))
  assert not hasattr(plain.layers[0].self_attn, "q_norm")
  assert not hasattr(plain.layers[0], "post_feedforward_layernorm")
