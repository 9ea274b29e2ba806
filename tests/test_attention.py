"""Attention dispatcher, every XLA implementation (xla, xla_cpu, xla_chunked, xla_blocks), cudnn
mask translation and splash masks vs the reference (gemmax.ops.reference)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_cases import compare, inputs, segments, visible_keys
from gemmax.ops import IMPLS, attention
from gemmax.ops.attention import choose_impl
from gemmax.ops.chunked import attention_xla_chunked
from gemmax.ops.cudnn import attention_cudnn
from gemmax.ops.qblocks import attention_qblocks
from gemmax.ops.reference import attention as reference
from gemmax.ops.xla import attention_xla
from gemmax.ops.xla_cpu import attention_xla_cpu


def _chunked(block):
  return lambda q, k, v, **kw: attention_xla_chunked(q, k, v, block_size=block, **kw)


XLA_IMPLS = {
  "xla": attention_xla,
  "xla_cpu": attention_xla_cpu,
  "xla_chunked": _chunked(8),
  "xla_blocks": lambda q, k, v, **kw: attention_qblocks(q, k, v, block=8, **kw),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("impl", list(XLA_IMPLS))
def test_every_xla_impl_matches_the_reference(impl, dtype):
  """Values and dq, dk, dv against the einsum oracle: GQA, window, softcap, packed segments."""
  q, k, v = inputs(b=2, t=29, n=4, kh=2, dtype=dtype)  # 29: no multiple of the blocks
  tol = 1e-5 if dtype == jnp.float32 else 5e-2
  kw = dict(scale=0.3, causal=True, sliding_window=6, softcap=20.0, segment_ids=segments(2, 29))
  compare(XLA_IMPLS[impl], q, k, v, tol, **kw)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("impl", ["xla", "xla_cpu"])
def test_explicit_positions_and_empty_rows_match_the_reference(impl, dtype):
  """KV-cache style: fewer queries than keys, explicit positions, a query whose segment has no
  key (zeros, finite gradients)."""
  q, k, v = inputs(b=2, t=5, s=12, n=4, kh=2, dtype=dtype)
  pos = jnp.arange(12)[None].repeat(2, 0)
  q_seg = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 1, 3]])
  kv_seg = jnp.ones((2, 12), jnp.int32)
  kw = dict(scale=0.25, causal=True, sliding_window=4, softcap=None, segment_ids=(q_seg, kv_seg))
  kw.update(q_positions=pos[:, -5:], kv_positions=pos)
  compare(XLA_IMPLS[impl], q, k, v, 1e-5 if dtype == jnp.float32 else 5e-2, **kw)
  assert not np.asarray(reference(q, k, v, **kw)[1, -1].astype(jnp.float32)).any()


@pytest.mark.parametrize("window", [None, 5, 8, 16, 40])  # < block, = block, > seq
@pytest.mark.parametrize("softcap", [None, 50.0, 5.0])
def test_chunked_window_softcap(window, softcap):
  q, k, v = inputs(b=2, t=37, n=4, kh=2)  # 37 is not a multiple of the block
  compare(
    _chunked(8),
    q,
    k,
    v,
    1e-5,
    scale=0.3,
    causal=True,
    sliding_window=window,
    softcap=softcap,
    segment_ids=None,
  )


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_chunked_gqa_head_dim(groups, head_dim):
  q, k, v = inputs(t=20, n=4, kh=4 // groups, h=head_dim)
  compare(
    _chunked(8),
    q,
    k,
    v,
    1e-5,
    scale=head_dim**-0.5,
    causal=True,
    sliding_window=7,
    softcap=50.0,
    segment_ids=None,
  )


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_segments(causal):
  q, k, v = inputs(b=2, t=30, n=2, kh=1)
  compare(
    _chunked(8),
    q,
    k,
    v,
    1e-5,
    scale=0.25,
    causal=causal,
    sliding_window=11,
    softcap=None,
    segment_ids=segments(2, 30),
  )


def test_chunked_q_shorter_than_kv():
  q, k, v = inputs(t=9, s=30)
  compare(
    _chunked(8),
    q,
    k,
    v,
    1e-5,
    scale=0.25,
    causal=True,
    sliding_window=6,
    softcap=None,
    segment_ids=None,
  )


def test_chunked_bf16():
  q, k, v = inputs(b=2, t=40, n=4, kh=2, h=64, dtype=jnp.bfloat16)
  compare(
    _chunked(16),
    q,
    k,
    v,
    5e-2,
    scale=0.125,
    causal=True,
    sliding_window=12,
    softcap=50.0,
    segment_ids=segments(2, 40),
  )


def test_chunked_memory_is_sub_quadratic():
  """Compiled temp memory of the chunked forward+backward grows ~linearly, the reference's ~t^2."""

  def temp(fn, t):
    q, k, v = (jax.ShapeDtypeStruct((1, t, 1, 32), jnp.float32),) * 3
    g = jax.grad(
      lambda q, k, v: fn(
        q, k, v, scale=1.0, causal=True, sliding_window=256, softcap=None, segment_ids=None
      ).sum(),
      (0, 1, 2),
    )
    return jax.jit(g).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

  chunked = _chunked(128)
  assert temp(chunked, 4096) < 3 * temp(chunked, 2048)
  assert temp(chunked, 4096) * 8 < temp(attention_xla_cpu, 4096)


@pytest.mark.parametrize("window", [1, 3, 5, 8, 30])
def test_window_boundary_exact(window):
  t = 24
  qi, ki = np.arange(t)[:, None], np.arange(t)[None, :]
  expected = (ki <= qi) & (ki > qi - window)
  np.testing.assert_array_equal(visible_keys(reference, t, window), expected)
  np.testing.assert_array_equal(visible_keys(attention_xla, t, window), expected)
  np.testing.assert_array_equal(visible_keys(_chunked(8), t, window), expected)
  cud = lambda q, k, v, **kw: attention_cudnn(q, k, v, implementation="xla", **kw)
  np.testing.assert_array_equal(visible_keys(cud, t, window), expected)


@pytest.mark.parametrize("causal,window", [(True, None), (True, 5), (False, 5), (False, None)])
def test_cudnn_mask_translation(causal, window):
  """The kwargs we give jax.nn.dot_product_attention encode the same mask (checked via its xla
  path)."""
  q, k, v = inputs(b=2, t=33, n=4, kh=2)
  kw = dict(scale=0.3, causal=causal, sliding_window=window, softcap=None, segment_ids=None)
  np.testing.assert_allclose(
    attention_cudnn(q, k, v, implementation="xla", **kw), attention_xla(q, k, v, **kw), atol=1e-5
  )


def test_explicit_impls_refuse_what_they_cannot_do():
  q, k, v = inputs(t=8)
  with pytest.raises(ValueError, match="softcap"):
    attention(q, k, v, impl="cudnn", softcap=50.0)
  with pytest.raises(ValueError, match="GPU"):
    attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), impl="cudnn")
  with pytest.raises(ValueError, match="segment_ids"):
    attention(q, k, v, impl="cudnn", segment_ids=jnp.zeros((1, 8), jnp.int32))
  with pytest.raises(ValueError, match="q_len == kv_len"):
    attention(q[:, :4], k, v, impl="splash")
  with pytest.raises(ValueError, match="not one of"):
    attention(q, k, v, impl="flash")
  with pytest.raises(ValueError, match="sliding_window"):
    attention(q, k, v, sliding_window=0)


def test_auto_choice():
  short, long_ = jnp.zeros((1, 128, 2, 256)), jnp.zeros((1, 8192, 2, 256))
  kw = dict(softcap=50.0, segment_ids=None)
  assert choose_impl(short, short, backend="cpu", **kw) == "xla_cpu"
  assert choose_impl(long_, long_, backend="cpu", **kw) == "xla_chunked"
  assert choose_impl(long_, long_, backend="gpu", **kw) == "pallas"
  assert choose_impl(long_, long_, backend="tpu", **kw) == "splash"
  assert choose_impl(short[:, :1], short, backend="tpu", **kw) == "xla_chunked"


def test_dispatcher_matches_reference_and_positions_path():
  q, k, v = inputs(b=2, t=16, n=4, kh=2)
  kw = dict(sliding_window=5, softcap=50.0)
  ref = attention(q, k, v, impl="xla", **kw)
  for impl in ("auto", "xla_cpu", "xla_chunked"):
    np.testing.assert_allclose(attention(q, k, v, impl=impl, **kw), ref, atol=1e-5)
  assert set(IMPLS) == {"auto", "xla", "xla_cpu", "xla_chunked", "pallas", "splash", "cudnn"}
  # KV-cache style call: the last 3 queries with explicit positions, any impl goes to xla.
  pos = jnp.arange(16)[None].repeat(2, 0)
  out = attention(q[:, -3:], k, v, impl="pallas", q_positions=pos[:, -3:], kv_positions=pos, **kw)
  np.testing.assert_allclose(out, ref[:, -3:], atol=1e-5)


def test_splash_mask_construction():
  from gemmax.ops.splash import make_mask

  t, w = 40, 7
  mask = make_mask(t, t, 2, causal=True, sliding_window=w)
  qi, ki = np.arange(t)[:, None], np.arange(t)[None, :]
  for head in range(2):
    np.testing.assert_array_equal(np.asarray(mask[head, :, :]), (ki <= qi) & (ki > qi - w))
  full = make_mask(t, t, 1, causal=False, sliding_window=w)
  np.testing.assert_array_equal(np.asarray(full[0, :, :]), ki > qi - w)


@pytest.mark.parametrize("window", [None, 5])
def test_default_positions_mask_is_a_constant(window):
  """xla_cpu: with default positions the causal/window mask is a compiled-in constant (an iota
  recomputed per element made XLA:CPU's softmax passes 25% slower); same values and gradients as
  explicit positions, which take the traced path."""
  q, k, v = inputs(b=2, t=16, n=4, kh=2, dtype=jnp.bfloat16)
  seg = segments(2, 16)
  kw = dict(scale=0.25, causal=True, sliding_window=window, softcap=50.0, segment_ids=seg)
  pos = jnp.arange(16)[None]

  def loss(**extra):
    return jax.jit(
      jax.value_and_grad(
        lambda q, k, v: attention_xla_cpu(q, k, v, **kw, **extra).astype(jnp.float32).sum(),
        (0, 1, 2),
      )
    )

  assert " iota(" not in loss().lower(q, k, v).compile().as_text()
  for a, b in zip(
    jax.tree.leaves(loss()(q, k, v)),
    jax.tree.leaves(loss(q_positions=pos, kv_positions=pos)(q, k, v)),
  ):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("window", [None, 5, 300])
def test_query_blocks_match_the_reference(window):
  """impl "xla_blocks" (causal self-attention in query blocks, each against the keys it can see,
  the window's start included) equals the reference in values and gradients, with segments."""
  q, k, v = inputs(b=2, t=37, n=4, kh=2)  # 37: a last block shorter than the others
  blocks = lambda q, k, v, **kw: attention_qblocks(q, k, v, block=8, **kw)
  compare(
    blocks,
    q,
    k,
    v,
    1e-5,
    scale=0.3,
    causal=True,
    sliding_window=window,
    softcap=50.0,
    segment_ids=segments(2, 37),
  )
  np.testing.assert_allclose(
    attention(q, k, v, impl="xla_blocks", causal=False),
    attention(q, k, v, impl="xla", causal=False),
    atol=1e-6,
  )


def test_auto_choice_for_long_prompts_on_cpu():
  t1k, t4k = jnp.zeros((1, 1024, 2, 64)), jnp.zeros((1, 4096, 2, 64))
  kw = dict(softcap=None, segment_ids=None)
  assert choose_impl(t1k, t1k, backend="cpu", **kw) == "xla_blocks"
  # two query blocks or more: from 256 tokens (a fine-tuning batch's length) on
  assert choose_impl(t1k[:, :256], t1k[:, :256], backend="cpu", **kw) == "xla_blocks"
  assert choose_impl(t1k[:, :255], t1k[:, :255], backend="cpu", **kw) == "xla_cpu"
  assert choose_impl(t1k[:, :1], t1k, backend="cpu", **kw) == "xla_cpu"
  assert choose_impl(t4k, t4k, backend="cpu", **kw) == "xla_chunked"
  assert choose_impl(t1k, t1k, backend="gpu", **kw) == "pallas"
