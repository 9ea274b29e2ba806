"""gemmax vs HF transformers on tiny random models: logits, loss, gradients, round trip."""

import numpy as np
import pytest
import torch
import transformers

import jax
import jax.numpy as jnp
from flax import nnx

from gemmax.convert import load_hf, save_hf
from hf_models import gemma2_config, gemma3_config, llama_config, make_hf_model, save_hf_model

LLAMA31_ROPE = dict(
  rope_type="llama3",
  factor=8.0,
  low_freq_factor=1.0,
  high_freq_factor=4.0,
  original_max_position_embeddings=32,
)
LLAMA32_ROPE = dict(LLAMA31_ROPE, factor=32.0)

CASES = {
  # name: (HF config, sequence length)
  "gemma2-window<seq": (gemma2_config(), 24),
  "gemma2-27b-style-scalar": (gemma2_config(query_pre_attn_scalar=144, head_dim=32), 20),
  "gemma2-gqa1": (gemma2_config(num_key_value_heads=4), 12),
  "gemma2-gqa4": (gemma2_config(num_key_value_heads=1), 12),
  "gemma3-window<seq-mqa-linear-rope": (gemma3_config(), 30),
  "gemma3-layer-types-list-gqa2": (
    gemma3_config(
      num_hidden_layers=4,
      num_key_value_heads=2,
      head_dim=32,
      query_pre_attn_scalar=168,
      layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
      sliding_window=5,
      rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 50_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 777.0},
      },
    ),
    17,
  ),
  "llama3.1-untied": (llama_config(rope_scaling=LLAMA31_ROPE), 40),
  "llama3.2-tied": (
    llama_config(rope_scaling=LLAMA32_ROPE, tie_word_embeddings=True, num_key_value_heads=1),
    40,
  ),
  "llama2-mha-linear-rope": (
    llama_config(
      num_key_value_heads=4, head_dim=24, rope_scaling=dict(rope_type="linear", factor=2.0)
    ),
    16,
  ),
}


def _ids(seq, batch=2, vocab=256, seed=0):
  return np.random.RandomState(seed).randint(3, vocab, (batch, seq))


_forward = nnx.jit(lambda model, ids: model(ids))


def _hf_logits(hf, ids):
  with torch.no_grad():
    return hf(torch.tensor(ids)).logits.numpy()


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
  config, seq = CASES[request.param]
  hf = make_hf_model(config)
  path = save_hf_model(hf, str(tmp_path_factory.mktemp(request.param)))
  return request.param, hf, path, seq


def test_logits_match_f32(pair):
  name, hf, path, seq = pair
  model = load_hf(path, dtype="float32")
  ids = _ids(seq)
  ref = _hf_logits(hf, ids)
  out = np.asarray(_forward(model, jnp.asarray(ids)))
  err = np.abs(out - ref).max() / max(1.0, np.abs(ref).max())
  assert err <= 1e-4, f"{name}: max relative |dlogit| {err:.2e}"


def _ce(logits, ids):
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
  return -jnp.take_along_axis(logp, ids[:, 1:, None], -1).mean()


def test_loss_and_input_gradients_match(pair):
  name, hf, path, seq = pair
  model = load_hf(path, dtype="float32")
  ids = _ids(seq, seed=1)
  emb = hf.get_input_embeddings()(torch.tensor(ids)).detach().requires_grad_(True)
  out = hf(inputs_embeds=emb, labels=torch.tensor(ids))
  out.loss.backward()
  loss_fn = lambda e: _ce(model(None, inputs_embeds=e), jnp.asarray(ids))
  loss, grad = jax.jit(jax.value_and_grad(loss_fn))(jnp.asarray(emb.detach().numpy()))
  np.testing.assert_allclose(float(loss), out.loss.item(), rtol=1e-5)
  g_ref = emb.grad.numpy()
  assert np.abs(np.asarray(grad) - g_ref).max() <= 1e-4 * np.abs(g_ref).max() + 1e-8, name


def test_round_trip_through_save_hf(pair, tmp_path):
  name, hf, path, seq = pair
  save_hf(load_hf(path), str(tmp_path / "rt"))
  hf2 = (
    transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path / "rt"), attn_implementation="eager"
    )
    .float()
    .eval()
  )
  ids = _ids(seq, seed=2)
  np.testing.assert_array_equal(_hf_logits(hf2, ids), _hf_logits(hf, ids))


@pytest.mark.parametrize("case", ["gemma2-window<seq", "llama3.1-untied"])
def test_bfloat16_kl_to_reference_is_small(case, tmp_path):
  """bf16 weights and activations: per-token KL(ref || gemmax) is reported and bounded."""
  config, seq = CASES[case]
  hf = make_hf_model(config)
  path = save_hf_model(hf, str(tmp_path))
  ids = _ids(seq)
  ref = jax.nn.log_softmax(jnp.asarray(_hf_logits(hf, ids)), -1)
  model = load_hf(path, dtype="bfloat16")
  got = jax.nn.log_softmax(_forward(model, jnp.asarray(ids)), -1)
  kl = (jnp.exp(ref) * (ref - got)).sum(-1)
  print(f"{case}: bf16 per-token KL mean {float(kl.mean()):.2e} max {float(kl.max()):.2e}")
  assert float(kl.max()) < 5e-3


def test_packed_segments_equal_separate_sequences(tmp_path):
  """Two examples packed into one row with segment_ids give the same logits as run alone."""
  hf = make_hf_model(gemma2_config())
  model = load_hf(save_hf_model(hf, str(tmp_path)))
  a, b = _ids(11, 1, seed=3), _ids(9, 1, seed=4)
  packed = np.concatenate([a, b], 1)
  seg = np.array([[1] * 11 + [2] * 9])
  out = np.asarray(model(jnp.asarray(packed), segment_ids=jnp.asarray(seg)))
  np.testing.assert_allclose(out[:, :11], np.asarray(model(jnp.asarray(a))), atol=1e-5)
  np.testing.assert_allclose(out[:, 11:], np.asarray(model(jnp.asarray(b))), atol=1e-5)
