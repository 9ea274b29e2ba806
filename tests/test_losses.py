"""Chunked next-token CE vs a dense reference: values, gradients, masking, memory."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmax.ops.common import index_equals
from gemmax.train.losses import cross_entropy, cross_entropy_sums, naive_cross_entropy


def _inputs(b=2, t=13, d=16, v=97, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  h = jax.random.normal(k[0], (b, t, d), jnp.float32)
  w = jax.random.normal(k[1], (d, v), jnp.float32) * 2.0  # large logits so the softcap bites
  y = jax.random.randint(k[2], (b, t), 0, v)
  m = (jax.random.uniform(k[3], (b, t)) > 0.3).astype(jnp.int32)
  return h, w, y, m


@pytest.mark.parametrize(
  "chunk,softcap", [(5, 30.0), (26, None), (7, 5.0), (None, 30.0), (7, 100.0)]
)
def test_matches_dense_values_and_grads(chunk, softcap):
  h, w, y, m = _inputs()
  f = lambda h, w: cross_entropy(h, w, y, m, softcap=softcap, chunk=chunk)
  g = lambda h, w: naive_cross_entropy(h, w, y, m, softcap=softcap)
  (l1, a1), (l2, a2) = f(h, w), g(h, w)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  np.testing.assert_allclose(a1["accuracy"], a2["accuracy"])
  assert float(a1["tokens"]) == float(m.sum())
  g1 = jax.grad(lambda h, w: f(h, w)[0], argnums=(0, 1))(h, w)
  g2 = jax.grad(lambda h, w: g(h, w)[0], argnums=(0, 1))(h, w)
  for x, z in zip(g1, g2):
    np.testing.assert_allclose(x, z, rtol=1e-4, atol=1e-6)


def test_hard_facts():
  """Masked tokens contribute nothing; uniform logits give log(V); loss is a masked mean."""
  h, w, y, m = _inputs()
  full, _ = cross_entropy(h, w, y, m, chunk=4)
  y2 = jnp.where(m > 0, y, (y + 1) % w.shape[1])  # change only masked-out targets
  np.testing.assert_allclose(cross_entropy(h, w, y2, m, chunk=4)[0], full, rtol=1e-6)
  zero_h = jnp.zeros_like(h)
  np.testing.assert_allclose(cross_entropy(zero_h, w, y, m)[0], np.log(w.shape[1]), rtol=1e-6)
  # Masked mean: sum(ce * mask) / sum(mask), computed by hand from log-softmax.
  logp = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", h, w), -1)
  ce = -jnp.take_along_axis(logp, y[..., None], -1)[..., 0]
  np.testing.assert_allclose(full, (ce * m).sum() / m.sum(), rtol=1e-5)


def _temp_bytes(fn, b, t, d, v):
  args = (
    jax.ShapeDtypeStruct((b, t, d), jnp.float32),
    jax.ShapeDtypeStruct((d, v), jnp.float32),
    jax.ShapeDtypeStruct((b, t), jnp.int32),
    jax.ShapeDtypeStruct((b, t), jnp.int32),
  )
  grad = jax.grad(lambda h, w, y, m: fn(h, w, y, m, softcap=30.0)[0], argnums=(0, 1))
  return jax.jit(grad).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_compiled_memory_flat_as_vocab_grows():
  """[B, T, V] is never materialised: temp memory at 256k vocab ~= at 8k; the dense one grows."""
  b, t, d = 4, 512, 8
  chunked = [_temp_bytes(cross_entropy, b, t, d, v) for v in (8192, 65536, 262144)]
  dense = [_temp_bytes(naive_cross_entropy, b, t, d, v) for v in (8192, 65536, 262144)]
  assert max(chunked) < 1.25 * min(chunked), chunked
  assert dense[2] > 20 * dense[0], dense
  assert chunked[2] < dense[2] / 20, (chunked, dense)
  # The dense version's temp holds at least one full [B, T, V] float32 array.
  assert dense[2] >= b * t * 262144 * 4


def test_index_equals_is_the_one_hot():
  ids = jnp.array([[0, 5, 96], [-1, 2**31 - 1, 50]], jnp.int32)
  np.testing.assert_array_equal(index_equals(ids, 97), np.asarray(ids)[..., None] == np.arange(97))


def test_backward_has_no_vocab_iota():
  """The one-hot in the loss's backward pass is a vector load, not an iota recomputed per element
  (XLA:CPU ran that [tokens, vocab] pass 2x slower with one)."""
  h, w, y, m = _inputs(v=512)
  grad = jax.grad(lambda h: cross_entropy(h, w, y, m, softcap=30.0)[0])
  hlo = jax.jit(grad).lower(h).compile().as_text()
  assert not re.search(r"\[\d+,512\]\{1,0\} iota\(", hlo), "iota over the vocabulary"
  np.testing.assert_allclose(
    grad(h),
    jax.grad(lambda h: naive_cross_entropy(h, w, y, m, softcap=30.0)[0])(h),
    rtol=1e-4,
    atol=1e-6,
  )


@pytest.mark.parametrize("chunk", [3, 4, 64])
def test_scored_tokens_only_match_dense_with_sparse_and_weighted_masks(chunk):
  """Only scored tokens get logits (a run-time number of chunks); values and both gradients equal
  the dense reference for a sparse mask, a weighted one, a tied (vocab-major) table, and none."""
  h, w, y, _ = _inputs(b=3, t=11, v=50)
  m = jnp.zeros((3, 11)).at[0, 2].set(1).at[1, 5:9].set(1).at[2, 10].set(1)
  mw = m * jnp.arange(1, 12, dtype=jnp.float32)  # weights, not just 0/1
  for mask in (m, mw):
    dense = lambda h, w: naive_cross_entropy(h, w, y, mask, softcap=30.0)[0] * jnp.sum(mask)
    ours = lambda h, w: (
      cross_entropy_sums(h, w.T, y, mask, softcap=30.0, chunk=chunk, vocab_major=True).loss_sum
    )
    np.testing.assert_allclose(ours(h, w), dense(h, w), rtol=1e-5)
    for a, b in zip(jax.grad(ours, (0, 1))(h, w), jax.grad(dense, (0, 1))(h, w)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  none = cross_entropy_sums(h, w, y, jnp.zeros((3, 11)), chunk=chunk)
  assert float(none.loss_sum) == 0 and float(none.count) == 0
  assert not np.any(
    np.asarray(
      jax.grad(lambda h: cross_entropy_sums(h, w, y, jnp.zeros((3, 11)), chunk=chunk).loss_sum)(h)
    )
  )


def test_frozen_output_table_gets_no_gradient_work():
  """With the table not differentiated (LoRA), the compiled loss gradient has no [V, D] product:
  dw is formed only for a trained table."""
  h, w, y, m = _inputs(b=2, t=16, v=512)
  hlo = (
    jax.jit(jax.grad(lambda h: cross_entropy_sums(h, w, y, m, chunk=8).loss_sum))
    .lower(h)
    .compile()
    .as_text()
  )
  assert not re.search(r"f32\[16,512\]\{[01],[01]\} (dot|fusion)\(", hlo), "a dw product"
