"""The sampler's [out, in] decode layout: same products, same generations, user's model untouched."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemmax import peft
from gemmax.models import ModelConfig, Transformer
from gemmax.models.layers import FEW_ROWS, Linear, matmul_t
from gemmax.sampling import Sampler
from gemmax.sampling.layout import decode_linears, use_out_in


@pytest.mark.parametrize("rows", [1, 8, FEW_ROWS, FEW_ROWS + 1, 200])
def test_matmul_t_matches_dot_values_and_gradients(rows):
  rng = np.random.default_rng(rows)
  x = jnp.asarray(rng.standard_normal((rows, 48), np.float32))
  wt = jnp.asarray(rng.standard_normal((40, 48), np.float32))
  f = lambda x, wt: (matmul_t(x, wt) ** 2).sum()
  g = lambda x, wt: ((x @ wt.T) ** 2).sum()
  np.testing.assert_allclose(jax.jit(matmul_t)(x, wt), x @ wt.T, rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.grad(f, (0, 1))(x, wt), jax.grad(g, (0, 1))(x, wt)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert matmul_t(x.reshape(1, rows, 48), wt).shape == (1, rows, 40)


def _model(preset, **kw):
  cfg = ModelConfig.preset(preset, vocab_size=256, eos_token_id=None, **kw)
  m = Transformer(cfg, rngs=nnx.Rngs(1))
  # DoRA on two projections (unmerged): their bases must keep the [in, out] layout.
  peft.apply(m, method="dora", rank=4, alpha=8, targets=["q_proj", "down_proj"])
  for _, mod in peft.targets.iter_modules(m, peft.LoRALinear):
    mod.lora_b.set_value(mod.lora_b[...] + 0.05)
  return m


@pytest.mark.parametrize("preset,kw", [("gemma2-tiny", {}),
                                       ("llama3-tiny", dict(tie_word_embeddings=False))])
def test_out_in_kernels_give_the_same_generations(preset, kw):
  m = _model(preset, **kw)
  before = {id(x): np.asarray(x.kernel[...]) for x in decode_linears(m)}
  prompts = [[1, 5, 9, 3], [1, 7], [1, 2, 3, 4, 5, 6, 7]]
  ref = Sampler(m, out_in_kernels=False).generate(prompts, 12)
  fast = Sampler(m, out_in_kernels=True)
  for stream in (None, lambda ids, text: None):  # the one-jit loop and the streaming loop
    got = fast.generate(prompts, 12, stream=stream)
    assert got.tokens == ref.tokens
    for a, b in zip(got.logprobs, ref.logprobs):
      np.testing.assert_allclose(a, b, atol=1e-5)
  # The user's model is untouched: kernels still [in, out] with the same values, layout default.
  for x in decode_linears(m):
    assert x.kernel_layout == "in_out" and np.array_equal(np.asarray(x.kernel[...]), before[id(x)])
  # Adapter bases are left out: 7 projections x 2 layers + (untied) lm_head, minus the 2 x 2 adapted.
  n_layers = m.config.num_hidden_layers
  assert len(decode_linears(m)) == 5 * n_layers + (not m.config.tie_word_embeddings)
  assert all(type(x) is Linear for x in decode_linears(m))


def test_out_in_is_chosen_for_batches_on_cpu():
  assert use_out_in(8) is (jax.default_backend() == "cpu")
  assert not use_out_in(1)
  assert use_out_in(1, True) and not use_out_in(8, False)


def test_out_in_copy_is_reused_until_the_model_changes(monkeypatch):
  from gemmax.sampling import sampler as sampler_mod
  m = _model("llama3-tiny", tie_word_embeddings=False)
  made = []
  real = sampler_mod.to_out_in
  monkeypatch.setattr(sampler_mod, "to_out_in", lambda *a, **k: made.append(1) or real(*a, **k))
  prompts = [[1, 5, 9, 3], [1, 7]]
  fast = Sampler(m, out_in_kernels=True)
  first = fast.generate(prompts, 6)
  assert fast.generate(prompts, 6).tokens == first.tokens and len(made) == 1  # reused
  # Change one weight of the user's model: the next call must see it (a fresh copy).
  head = m.lm_head.kernel
  head.set_value(-head[...])
  got = fast.generate(prompts, 6)
  assert len(made) == 2
  want = Sampler(m, out_in_kernels=False).generate(prompts, 6)
  assert got.tokens == want.tokens and got.tokens != first.tokens
