"""The sampler's [out, in] decode layout: same products, same generations, user's model untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemmax import peft
from gemmax.models import ModelConfig, Transformer
from gemmax.models.layers import Linear
from gemmax.ops.matmul import FEW_ROWS, dot2d, matmul_t
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


@pytest.mark.parametrize(
  "preset,kw", [("gemma2-tiny", {}), ("llama3-tiny", dict(tie_word_embeddings=False))]
)
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
  # The user's model is untouched: plain Linears, kernels [in, out] with the same values.
  for x in decode_linears(m):
    assert type(x) is Linear and np.array_equal(np.asarray(x.kernel[...]), before[id(x)])
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


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 8])
def test_few_row_bf16_products_equal_the_plain_product(rows):
  """One bf16 row is a multiply-and-reduce, two or three are padded to four (a native bf16
  product on XLA:CPU): values equal the plain product accumulated in float32; gradients equal
  those of the same bf16 product without the padding (gemmax.ops.matmul.dot2d), and for one row,
  whose gradient autodiff forms in float32, they are within bf16 rounding of them."""
  rng = np.random.default_rng(rows)
  x = jnp.asarray(rng.standard_normal((rows, 48)), jnp.bfloat16)
  wt = jnp.asarray(rng.standard_normal((40, 48)), jnp.bfloat16)
  want = jax.lax.dot_general(x, wt, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  got = jax.jit(lambda x, wt: matmul_t(x, wt, preferred_element_type=jnp.float32))(x, wt)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  f = lambda x, wt: (matmul_t(x, wt, preferred_element_type=jnp.float32) ** 2).sum()
  g = lambda x, wt: (dot2d(x, wt, w_t=True, preferred_element_type=jnp.float32) ** 2).sum()
  for a, b in zip(jax.grad(f, (0, 1))(x, wt), jax.grad(g, (0, 1))(x, wt)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if rows == 1:
      np.testing.assert_allclose(a, b, atol=2**-6 * np.abs(b).max())
    else:
      np.testing.assert_array_equal(a, b)


def test_one_row_bf16_product_reads_bf16_weights_in_a_loop():
  """XLA must not hoist a one-row product's float32 weight conversion out of a decode loop: the
  loop would then read a float32 copy of every weight (twice the bytes, twice the memory)."""
  wt = jnp.ones((64, 48), jnp.bfloat16)

  def loop(x, wt):
    return jax.lax.fori_loop(0, 4, lambda i, x: matmul_t(x, wt)[:, :48] + x, x)

  hlo = jax.jit(loop).lower(jnp.ones((1, 48), jnp.bfloat16), wt).compile().as_text()
  loop_lines = "".join(l for l in hlo.splitlines() if " while(" in l)
  assert "f32[64,48]" not in loop_lines and "bf16[64,48]" in loop_lines


def test_decode_copy_packs_projections_of_one_input():
  """The decode copy holds q/k/v and gate/up as one stacked [out, in] kernel each (plain Linears
  only), every other plain Linear as [out, in]; adapted projections keep their modules."""
  from gemmax.sampling.layout import OutInLinear, PackedProjection, to_out_in

  m = _model("llama3-tiny", tie_word_embeddings=False)  # DoRA on every q_proj and down_proj
  copy = nnx.merge(*to_out_in(m))
  attn0, mlp0 = copy.layers[0].self_attn, copy.layers[0].mlp
  assert isinstance(attn0.q_proj, peft.LoRALinear)  # adapted: q stays, k/v go [out, in] alone
  assert type(attn0.k_proj) is OutInLinear and type(attn0.v_proj) is OutInLinear
  assert type(mlp0.gate_proj) is PackedProjection and mlp0.gate_proj.packed is mlp0.up_proj.packed
  assert type(copy.lm_head) is OutInLinear and type(m.lm_head) is Linear  # the user's model: as is
  plain = Transformer(m.config, rngs=nnx.Rngs(2))
  attn = nnx.merge(*to_out_in(plain)).layers[1].self_attn
  assert type(attn.q_proj) is PackedProjection and attn.q_proj.packed is attn.v_proj.packed
  c = plain.config
  kv = c.num_key_value_heads * c.head_dim
  assert attn.q_proj.packed.shape == (c.num_attention_heads * c.head_dim + 2 * kv, c.hidden_size)
  np.testing.assert_array_equal(
    attn.k_proj.packed[...][attn.k_proj.start : attn.k_proj.stop],
    plain.layers[1].self_attn.k_proj.kernel[...].T,
  )
  prompts = [[1, 5, 9, 3], [1, 7]]
  want = Sampler(plain, out_in_kernels=False).generate(prompts, 8)
  got = Sampler(plain, out_in_kernels=True).generate(prompts, 8)
  assert got.tokens == want.tokens
  for a, b in zip(got.logprobs, want.logprobs):
    np.testing.assert_allclose(a, b, atol=1e-5)
