"""Pallas flash kernel (interpret mode on CPU) and splash (TPU kernel, interpreted) vs the
reference (gemmax.ops.reference)."""

import jax.numpy as jnp
import numpy as np
import pytest

from attention_cases import compare, inputs, segments, visible_keys
from gemmax.ops.pallas import attention_pallas


def _pallas(q, k, v, **kw):
  return attention_pallas(q, k, v, block_q=16, block_k=16, **kw)


@pytest.mark.parametrize(
  "window,softcap,groups,seg,dtype",
  [
    (5, 50.0, 2, False, jnp.float32),  # window < block, GQA, softcap
    (20, 5.0, 1, True, jnp.float32),  # window not a multiple of the block, small softcap, segments
    (None, None, 4, False, jnp.float32),  # global causal, 4 groups
    (7, 20.0, 2, True, jnp.bfloat16),
  ],
)
def test_pallas_fast(window, softcap, groups, seg, dtype):
  q, k, v = inputs(b=2, t=37, n=4, kh=4 // groups, dtype=dtype)  # 37: not a multiple of 16
  compare(
    _pallas,
    q,
    k,
    v,
    1e-5 if dtype == jnp.float32 else 5e-2,
    scale=0.3,
    causal=True,
    sliding_window=window,
    softcap=softcap,
    segment_ids=segments(2, 37) if seg else None,
  )


def test_pallas_window_boundary_exact():
  t, w = 24, 5
  qi, ki = np.arange(t)[:, None], np.arange(t)[None, :]
  # head_dim 24 is padded to 32 inside; t=24 is padded to 32.
  np.testing.assert_array_equal(visible_keys(_pallas, t, w), (ki <= qi) & (ki > qi - w))


@pytest.mark.slow
@pytest.mark.parametrize("window", [None, 7, 16, 64])
@pytest.mark.parametrize("softcap", [None, 50.0, 5.0])
@pytest.mark.parametrize("head_dim,groups", [(64, 1), (128, 2), (256, 4)])
def test_pallas_cross_product(window, softcap, head_dim, groups):
  q, k, v = inputs(t=40, n=4, kh=4 // groups, h=head_dim)
  compare(
    _pallas,
    q,
    k,
    v,
    1e-5,
    scale=head_dim**-0.5,
    causal=True,
    sliding_window=window,
    softcap=softcap,
    segment_ids=None,
  )


@pytest.mark.slow
@pytest.mark.parametrize("causal", [True, False])
def test_pallas_segments_bf16(causal):
  q, k, v = inputs(b=2, t=48, n=4, kh=2, h=64, dtype=jnp.bfloat16)
  compare(
    _pallas,
    q,
    k,
    v,
    5e-2,
    scale=0.125,
    causal=causal,
    sliding_window=12,
    softcap=50.0,
    segment_ids=segments(2, 48),
  )


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_splash_interpret(dtype):
  from gemmax.ops.splash import attention_splash

  q, k, v = inputs(b=2, t=37, n=4, kh=2, dtype=dtype)
  compare(
    lambda *a, **kw: attention_splash(*a, block=128, **kw),
    q,
    k,
    v,
    1e-5 if dtype == jnp.float32 else 5e-2,
    scale=0.3,
    causal=True,
    sliding_window=5,
    softcap=2.0,
    segment_ids=segments(2, 37),
  )
