"""Shared helpers for the attention tests: random inputs and value/grad comparison with the
oracle, gemmax.ops.reference.attention."""

import jax
import jax.numpy as jnp
import numpy as np

from gemmax.ops.reference import attention as reference


def inputs(b=1, t=24, s=None, n=2, kh=1, h=16, dtype=jnp.float32, seed=0):
  s = s or t
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (
    jax.random.normal(ks[0], (b, t, n, h), dtype),
    jax.random.normal(ks[1], (b, s, kh, h), dtype),
    jax.random.normal(ks[2], (b, s, kh, h), dtype),
  )


def segments(b, s, seed=0):
  return jnp.asarray(np.sort(np.random.RandomState(seed).randint(0, 3, (b, s)), axis=1), jnp.int32)


def compare(fn, q, k, v, tol, **kw):
  """fn(q, k, v, **kw) vs the reference in values and dq, dk, dv."""

  def loss(f):
    # A fixed random cotangent so every output element matters.
    w = jax.random.normal(jax.random.PRNGKey(9), q.shape, jnp.float32)
    return lambda q, k, v: (f(q, k, v, **kw).astype(jnp.float32) * w).sum()

  ref = reference(q, k, v, **kw)
  out = fn(q, k, v, **kw)
  np.testing.assert_allclose(
    np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=tol, rtol=tol
  )
  g_ref = jax.grad(loss(reference), (0, 1, 2))(q, k, v)
  g = jax.grad(loss(fn), (0, 1, 2))(q, k, v)
  for name, a, r in zip("qkv", g, g_ref):
    scale = max(1.0, float(jnp.abs(r.astype(jnp.float32)).max()))
    np.testing.assert_allclose(
      np.asarray(a, np.float32),
      np.asarray(r, np.float32),
      atol=tol * scale,
      rtol=tol,
      err_msg=f"d{name}",
    )


def visible_keys(fn, t, window, causal=True):
  """One-hot trick: q = k = 0 gives uniform weights over visible keys; v = one-hot(key index), so
  output[q, j] > 0 exactly when key j is visible to query q. Returns a [t, t] bool matrix."""
  q = jnp.zeros((1, t, 1, t), jnp.float32)
  v = jnp.eye(t, dtype=jnp.float32)[None, :, None, :]
  out = fn(q, q, v, scale=1.0, causal=causal, sliding_window=window, softcap=None, segment_ids=None)
  return np.asarray(out[0, :, 0, :]) > 0
