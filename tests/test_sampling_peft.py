"""The sampler runs models carrying LoRA/DoRA adapters (merged or not) and NF4 bases."""

import numpy as np
import pytest
from flax import nnx

from gemmax.models import ModelConfig, Transformer
from gemmax.sampling import Sampler

peft = pytest.importorskip("gemmax.peft")
PROMPTS = [[2, 30, 31, 32], [2, 9, 8, 7, 6, 5, 4, 3, 12, 13, 14]]


def _model():
  return Transformer(ModelConfig.preset("gemma2-tiny", eos_token_id=None), rngs=nnx.Rngs(6))


def _randomize_b(model):
  """Non-zero lora_b so the adapter changes generations."""
  rs = np.random.RandomState(0)
  for path, var in nnx.state(model, peft.LoRAParam).flat_state():
    if "lora_b" in "/".join(map(str, path)):
      var.set_value(0.3 * rs.randn(*var.shape).astype(np.float32))


@pytest.mark.parametrize("method", ["lora", pytest.param("dora", marks=pytest.mark.slow)])
def test_adapter_merged_and_unmerged_agree(method):
  base = Sampler(_model()).generate(PROMPTS, 10)
  model = _model()
  peft.apply(model, method=method, rank=4, alpha=8, rngs=nnx.Rngs(1))
  _randomize_b(model)
  adapted = Sampler(model).generate(PROMPTS, 10)
  assert adapted.tokens != base.tokens  # the adapter is really used
  merged = Sampler(peft.merge(model)).generate(PROMPTS, 10)
  assert merged.tokens == adapted.tokens
  np.testing.assert_allclose(np.stack(merged.logprobs), np.stack(adapted.logprobs), atol=1e-4)


@pytest.mark.slow
def test_nf4_base_with_adapter():
  model = _model()
  peft.apply(model, method="lora", rank=4, alpha=8, quantize="nf4", rngs=nnx.Rngs(1))
  _randomize_b(model)
  q = Sampler(model).generate(PROMPTS, 10)
  merged = Sampler(peft.merge(model)).generate(PROMPTS, 10)  # dequantised NF4 + adapter
  assert q.tokens == merged.tokens
  np.testing.assert_allclose(np.stack(q.logprobs), np.stack(merged.logprobs), atol=1e-3)
