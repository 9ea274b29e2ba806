"""attention_decode (written slots only, online softmax) vs the reference over the whole cache."""

import jax.numpy as jnp
import numpy as np
import pytest

from gemmax.ops.decode import attention_decode
from gemmax.ops.reference import attention as reference


@pytest.mark.parametrize(
  "size,written,window,softcap,ring",
  [
    (144, 80, None, None, False),  # global buffer, partly written; last block clamped (144 % 64)
    (144, 144, None, 50.0, False),  # full buffer, softcap
    (64, 64, 64, 50.0, True),  # a full ring: slots hold positions out of order
    (64, 20, 64, None, True),  # a ring not yet wrapped
    (200, 130, 48, None, False),  # window shorter than the written span
  ],
)
def test_matches_reference(size, written, window, softcap, ring):
  rng = np.random.default_rng(size + written)
  b, n, kh, h = 3, 8, 4, 16
  q = jnp.asarray(rng.standard_normal((b, 1, n, h), np.float32))
  k = jnp.asarray(rng.standard_normal((b, size, kh, h), np.float32))
  v = jnp.asarray(rng.standard_normal((b, size, kh, h), np.float32))
  now = written + (37 if ring else 0) - 1  # position of the new token
  pos = np.full((b, size), -1, np.int32)
  seg = np.zeros((b, size), np.int32)
  span = np.arange(now - written + 1, now + 1)
  slots = span % size if ring else np.arange(written)
  pos[:, slots], seg[:, slots] = span, 1
  seg[1, slots[:5]] = 0  # row 1 was left-padded: its first slots are padding
  seg[2, :] = 0  # row 2 sees nothing: zeros, like the reference
  q_pos = jnp.full((b, 1), now, jnp.int32)
  kw = dict(
    scale=0.25,
    sliding_window=window,
    softcap=softcap,
    segment_ids=(jnp.ones((b, 1), jnp.int32), jnp.asarray(seg)),
    q_positions=q_pos,
    kv_positions=jnp.asarray(pos),
  )
  want = reference(q, k, v, causal=True, **kw)
  got = attention_decode(q, k, v, written=jnp.int32(min(written, size)), block=64, **kw)
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
  assert np.all(np.asarray(got[2]) == 0)


@pytest.mark.parametrize("size", [144, 300])  # one pass (<= ONE_PASS slots) and the block loop
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_default_block_matches_reference(size, dtype):
  """The default block: a cache of at most ONE_PASS slots is read in one block, a longer one in
  BLOCK-sized blocks; both equal the reference, bf16 caches included (read as bits)."""
  rng = np.random.default_rng(size)
  b, n, kh, h, written = 2, 6, 2, 16, size - 40
  q, k, v = (
    jnp.asarray(rng.standard_normal(s, np.float32), dtype)
    for s in ((b, 1, n, h), (b, size, kh, h), (b, size, kh, h))
  )
  pos = np.where(np.arange(size) < written, np.arange(size), -1)[None].repeat(b, 0)
  seg = (pos >= 0).astype(np.int32)
  kw = dict(
    scale=0.25,
    sliding_window=None,
    softcap=None,
    segment_ids=(jnp.ones((b, 1), jnp.int32), jnp.asarray(seg)),
    q_positions=jnp.full((b, 1), written - 1, jnp.int32),
    kv_positions=jnp.asarray(pos),
  )
  want = reference(q, k, v, causal=True, **kw).astype(jnp.float32)
  got = attention_decode(q, k, v, written=jnp.int32(written), **kw).astype(jnp.float32)
  np.testing.assert_allclose(got, want, atol=2e-2 if dtype == jnp.bfloat16 else 2e-6, rtol=1e-5)
