"""NF4 storage: codebook facts, round trip, bits per parameter, error on gaussian weights."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from gemmax.models import ModelConfig, Transformer
from gemmax.models.layers import Linear
import gemmax.peft as gp
from gemmax.quant import nf4


def test_codebook_facts():
  c = nf4.NF4_CODE
  assert c.shape == (16,) and np.all(np.diff(c) > 0)
  assert c[0] == -1.0 and c[7] == 0.0 and c[15] == 1.0
  assert abs(c[8] - 0.07958029955625534) < 1e-9  # asymmetric: 8 positive, 7 negative values
  d = nf4.DYNAMIC_MAP
  assert d.shape == (256,) and np.all(np.diff(d) >= 0)
  assert d[-1] == 1.0 and d[0] == pytest.approx(-0.9929687, abs=1e-6) and 0.0 in d
  assert np.sum(d > 0) == 128 and np.sum(d < 0) == 127


def test_packing_high_nibble_first():
  w = jnp.asarray(np.tile(nf4.NF4_CODE, 4)[None, :])  # [1, 64]: codes 0..15 in order
  q = nf4.quantize(w)
  assert q["codes"][:8].tolist() == [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]


def test_round_trip_is_codebook_times_absmax():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((96, 160)).astype(np.float32) * 0.02
  q = nf4.quantize(jnp.asarray(w))
  deq = np.asarray(nf4.dequantize(q, w.shape))
  blocks = w.reshape(-1, 64)
  true_absmax = np.abs(blocks).max(1)
  absmax = np.asarray(nf4.dequantize_absmax(q["absmax_q"], q["absmax_scale"], q["absmax_offset"]))
  # double quant: 8-bit dynamic map on the centred absmax; error small vs the absmax itself
  rel = np.abs(absmax - true_absmax) / true_absmax
  assert rel.max() < 0.02, rel.max()
  ratio = deq.reshape(-1, 64) / absmax[:, None]
  dist = np.abs(ratio[..., None] - nf4.NF4_CODE).min(-1)
  assert dist.max() < 1e-5  # every value is exactly a codebook value times its block absmax
  # and it is the nearest codebook value to w / true absmax (up to the absmax error)
  naive = nf4.NF4_CODE[np.abs((blocks / true_absmax[:, None])[..., None] - nf4.NF4_CODE).argmin(-1)]
  agree = np.mean(np.isclose(ratio, naive, atol=1e-5))
  assert agree > 0.98, agree


def test_bits_per_parameter_with_double_quant():
  lin = nf4.NF4Linear(
    jnp.zeros((512, 256), jnp.bfloat16) + 0.01, axes=("embed", "mlp"), dtype=jnp.float32
  )
  bits = lin.nbytes() * 8 / (512 * 256)
  assert bits == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-3)
  assert abs(bits - 4.127) < 1e-3, bits


def test_error_on_gaussian_beats_uniform_int4():
  rng = np.random.default_rng(1)
  w = rng.standard_normal((256, 512)).astype(np.float32)
  deq = np.asarray(nf4.dequantize(nf4.quantize(jnp.asarray(w)), w.shape))
  err = deq - w
  rmse = float(np.sqrt(np.mean(err**2)))
  # reference: symmetric uniform 4-bit absmax quantisation (15 levels), same blocks of 64
  b = w.reshape(-1, 64)
  s = np.abs(b).max(1, keepdims=True) / 7
  uni = (np.round(b / s) * s).reshape(w.shape)
  rmse_uni = float(np.sqrt(np.mean((uni - w) ** 2)))
  assert abs(float(np.mean(err))) < 2e-3  # unbiased
  assert rmse < 0.95 * rmse_uni, (rmse, rmse_uni)  # NF4 suits gaussians better
  assert 0.05 < rmse < 0.12, rmse


def test_nf4_linear_forward_and_not_trainable():
  base = Linear(
    64, 96, axes=("embed", "mlp"), dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)
  )
  q = nf4.NF4Linear(base.kernel[...], axes=("embed", "mlp"), dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(1), (3, 5, 64))
  want = x @ np.asarray(q.weight()).T
  np.testing.assert_allclose(q(x), want, rtol=1e-5, atol=1e-6)
  assert jax.tree.leaves(nnx.state(q, nnx.Param)) == []
  assert q.codes.get_metadata()["axes"] == ("mlp",)


def test_quantize_model_then_merge():
  cfg = ModelConfig.preset("llama3-tiny")
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  ids = jnp.arange(16).reshape(2, 8)
  ref = model(ids)
  gp.quantize_model(model)
  assert isinstance(model.layers[0].mlp.down_proj, nf4.NF4Linear)
  assert isinstance(model.lm_head, Linear)  # all-linear leaves lm_head alone
  q = model(ids)
  assert float(jnp.max(jnp.abs(q - ref))) < 0.1 * float(jnp.max(jnp.abs(ref)))
  gp.merge(model)
  assert isinstance(model.layers[0].mlp.down_proj, Linear)
  np.testing.assert_allclose(model(ids), q, atol=1e-5)
