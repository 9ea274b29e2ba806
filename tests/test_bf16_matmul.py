"""bf16 products accumulate in float32 (gemmax.ops.matmul's dot2d, contract_tokens and the
low-precision attention backward in gemmax.ops.xla_cpu); the hand-written backward passes (bf16
attention, the gated MLP activation, RoPE) agree with autodiff of the plain versions in
gemmax.ops.reference.

Values and gradients must equal float32 products of the same bf16 operands rounded once to bf16.
On a CPU with bf16 matmul instructions, every product of a bf16 train step must compile to a
bf16 dot: XLA:CPU upcasts to float32 any bf16 dot that returns bf16, that contracts the leading
axis of a 2-D operand, or whose operand is an explicit transpose (`a @ b.T`).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemmax.models.layers import activation
from gemmax.models.rope import apply_rope, inverse_frequencies
from gemmax.ops import reference
from gemmax.ops.fused import gated
from gemmax.ops.matmul import contract_tokens, dot2d, matmul, matmul_t
from gemmax.ops.xla_cpu import attention_xla_cpu
from gemmax.train.losses import cross_entropy_sums

BF16 = jnp.bfloat16


def _rand(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32).astype(BF16)


def _ref(x, w, w_t, out=BF16):
  w = w.astype(jnp.float32)
  return (x.astype(jnp.float32) @ (w.T if w_t else w)).astype(out)


def _close(a, b):  # one bf16 rounding apart at most (float32 sums in another order)
  np.testing.assert_allclose(
    np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2**-7, atol=1e-3
  )


@pytest.mark.parametrize("w_t", [False, True])
@pytest.mark.parametrize("out", [None, jnp.float32])
def test_values_and_gradients_match_float32_products(w_t, out):
  x, w = _rand(0, (96, 40)), _rand(1, (24, 40) if w_t else (40, 24))
  y = jax.jit(lambda x, w: dot2d(x, w, w_t=w_t, preferred_element_type=out))(x, w)
  assert y.dtype == (out or BF16)
  _close(y, _ref(x, w, w_t, out or BF16))

  g = _rand(2, (96, 24))
  f = lambda x, w: jnp.sum(
    dot2d(x, w, w_t=w_t, preferred_element_type=out).astype(jnp.float32) * g.astype(jnp.float32)
  )
  dx, dw = jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)
  assert dx.dtype == dw.dtype == BF16
  g32, x32, w32 = (a.astype(jnp.float32) for a in (g, x, w))
  _close(dx, (g32 @ (w32 if w_t else w32.T)).astype(BF16))
  _close(dw, ((g32.T @ x32) if w_t else (x32.T @ g32)).astype(BF16))


@pytest.mark.parametrize("rows", [8, 200])  # matmul_t's two paths
def test_matmul_and_matmul_t_agree_in_bf16(rows):
  x, w = _rand(3, (2, rows // 2, 32)), _rand(4, (32, 48))
  _close(matmul(x, w), matmul_t(x, w.T))
  gx = jax.grad(lambda x: jnp.sum(matmul(x, w).astype(jnp.float32)))(x)
  gx_t = jax.grad(lambda x: jnp.sum(matmul_t(x, w.T).astype(jnp.float32)))(x)
  _close(gx, gx_t)


def test_vocab_major_loss_equals_the_transposed_weight():
  h, emb = _rand(5, (2, 8, 16)), _rand(6, (40, 16))  # tied table as stored: [vocab, hidden]
  y = jax.random.randint(jax.random.key(7), (2, 8), 0, 40)
  m = jnp.ones((2, 8))
  a = cross_entropy_sums(h, emb, y, m, vocab_major=True, softcap=30.0)
  b = cross_entropy_sums(h, emb.T, y, m, softcap=30.0)
  np.testing.assert_allclose(a.loss_sum, b.loss_sum, rtol=1e-6)
  ga = jax.grad(lambda e: cross_entropy_sums(h, e, y, m, vocab_major=True).loss_sum)(emb)
  gb = jax.grad(lambda e: cross_entropy_sums(h, e.T, y, m).loss_sum)(emb)
  _close(ga, gb)
  with pytest.raises(ValueError, match=r"\[vocab, hidden=16\]"):
    cross_entropy_sums(h, emb.T, y, m, vocab_major=True)


def _cpu_has_bf16_matmul() -> bool:
  try:
    flags = open("/proc/cpuinfo").read()
  except OSError:
    return False
  return jax.default_backend() == "cpu" and bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))


needs_bf16_matmul = pytest.mark.skipif(
  not _cpu_has_bf16_matmul(),
  reason=(
    "XLA:CPU has native bf16 dot kernels only on CPUs with AMX or AVX512-BF16; elsewhere it may "
    "upcast every bf16 dot, so there is no fast form to check (values are checked above)"
  ),
)


def _dots(hlo: str) -> list[tuple[str, str, str]]:
  """(lhs type, rhs type, lhs contracting dim) of every dot in optimised HLO, fused bodies too."""
  hlo = re.sub(r"lhs_batch_dims=\{[\d,]*\}, ", "", hlo)  # batched dots too
  out = []
  for comp in re.split(r"\n(?=\S)", hlo):  # one computation per block
    types = dict(re.findall(r"(%[\w.\-]+) = (\w+)\[", comp))
    types.update(re.findall(r"([\w.\-]+): (\w+)\[", comp.split("\n")[0]))
    for a, b, dim in re.findall(
      r" dot\((%[\w.\-]+), (%[\w.\-]+)\), lhs_contracting_dims=\{(\d)\}", comp
    ):
      out.append((types.get(a) or types.get(a[1:]), types.get(b) or types.get(b[1:]), dim))
  return out


@needs_bf16_matmul
def test_compiled_bf16_step_keeps_forward_and_input_gradient_dots_in_bf16():
  x, w = _rand(8, (4, 64, 128)), _rand(9, (128, 256))
  emb = _rand(10, (512, 256))  # a tied output table: the transposed-operand case
  y = jax.random.randint(jax.random.key(11), (4, 64), 0, 512)

  def loss(x, w, emb):
    h = matmul(x, w)
    return cross_entropy_sums(h, emb, y, jnp.ones((4, 64)), vocab_major=True).loss_sum

  hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, w, emb).compile().as_text()
  dots = _dots(hlo)
  assert len(dots) == 6, dots  # forward 2; backward: 2 input gradients, 2 weight gradients
  assert all(d[:2] == ("bf16", "bf16") for d in dots), dots


@pytest.mark.parametrize("n", [64, 7])
@pytest.mark.parametrize("dtype", [BF16, jnp.float32])
def test_contract_tokens_is_a_transposed_product(n, dtype):
  a, b = _rand(12, (n, 16)).astype(dtype), _rand(13, (n, 48)).astype(dtype)
  got = contract_tokens(a, b)
  assert got.dtype == jnp.float32 and got.shape == (16, 48)
  want = a.astype(jnp.float32).T @ b.astype(jnp.float32)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)


_ATTN = dict(scale=0.125, causal=True, softcap=20.0, segment_ids=None)


def _attn_grads(q, k, v, cot, window):
  def f(q, k, v):
    out = attention_xla_cpu(q, k, v, sliding_window=window, **_ATTN)
    return jnp.sum(out.astype(jnp.float32) * cot)

  return jax.grad(f, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("window", [None, 5])
def test_low_precision_attention_gradients_match_float32_autodiff(window):
  q, k, v = _rand(14, (2, 12, 4, 16)), _rand(15, (2, 12, 2, 16)), _rand(16, (2, 12, 2, 16))
  cot = jax.random.normal(jax.random.key(17), q.shape)
  f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
  want = _attn_grads(f32(q), f32(k), f32(v), cot, window)  # plain autodiff in float32
  got = _attn_grads(q, k, v, cot, window)  # the bf16 custom VJP
  for g, w in zip(got, want):
    assert g.dtype == BF16
    scale = float(jnp.max(jnp.abs(w)))
    np.testing.assert_allclose(np.asarray(f32(g)), np.asarray(w), atol=2e-2 * scale, rtol=0)
  out = attention_xla_cpu(q, k, v, sliding_window=window, **_ATTN)
  ref = reference.attention(f32(q), f32(k), f32(v), sliding_window=window, **_ATTN)
  np.testing.assert_allclose(np.asarray(f32(out)), np.asarray(ref), atol=2e-2, rtol=0)


@needs_bf16_matmul
def test_compiled_bf16_attention_gradient_keeps_every_dot_in_bf16():
  q, k, v = _rand(14, (2, 32, 4, 16)), _rand(15, (2, 32, 2, 16)), _rand(16, (2, 32, 2, 16))
  cot = jax.random.normal(jax.random.key(17), q.shape)
  hlo = jax.jit(_attn_grads, static_argnums=4).lower(q, k, v, cot, 8).compile().as_text()
  dots = _dots(hlo)
  # logits, P @ V (its output enters the backward's row term), then dV, dP, dQ, dK
  assert len(dots) == 6 and all(d[:2] == ("bf16", "bf16") for d in dots), dots


def test_low_precision_attention_query_without_visible_keys_gets_zeros():
  q, k, v = _rand(20, (1, 8, 2, 16)), _rand(21, (1, 8, 1, 16)), _rand(22, (1, 8, 1, 16))
  q_seg = jnp.asarray([[1, 1, 1, 1, 1, 2, 2, 2]])  # segment 2 has no keys: nothing is visible
  kv_seg = jnp.ones((1, 8), jnp.int32)
  kw = dict(scale=0.25, causal=True, sliding_window=None, softcap=20.0, segment_ids=(q_seg, kv_seg))

  def f(q, k, v):
    return jnp.sum(attention_xla_cpu(q, k, v, **kw).astype(jnp.float32) ** 2)

  out = attention_xla_cpu(q, k, v, **kw)
  assert not np.asarray(out[0, 5:].astype(jnp.float32)).any()
  f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
  np.testing.assert_allclose(
    np.asarray(f32(out)), np.asarray(reference.attention(f32(q), f32(k), f32(v), **kw)), atol=2e-2
  )
  for g, w in zip(jax.grad(f, (0, 1, 2))(q, k, v), jax.grad(f, (0, 1, 2))(f32(q), f32(k), f32(v))):
    assert np.isfinite(np.asarray(f32(g))).all()
    np.testing.assert_allclose(
      np.asarray(f32(g)), np.asarray(w), atol=3e-2 * float(jnp.max(jnp.abs(w)))
    )


@pytest.mark.parametrize("name", ["gelu_pytorch_tanh", "silu"])
@pytest.mark.parametrize("dtype", [jnp.float32, BF16])
def test_gated_activation_matches_autodiff_of_the_plain_expression(name, dtype):
  act = activation(name)
  gate, up = _rand(30, (64, 48)).astype(dtype), _rand(31, (64, 48)).astype(dtype)
  cot = jax.random.normal(jax.random.key(32), gate.shape)

  def plain(g, u):  # the reference in float32 throughout, autodiff's gradient
    return reference.gated(act, g.astype(jnp.float32), u.astype(jnp.float32))

  out = gated(act, gate, up)
  assert out.dtype == dtype
  want = plain(gate, up)
  if dtype == BF16:
    _close(out, want.astype(dtype))
  else:
    np.testing.assert_allclose(out, want, rtol=1e-6)
  got = jax.grad(lambda g, u: jnp.sum(gated(act, g, u).astype(jnp.float32) * cot), (0, 1))(gate, up)
  ref = jax.grad(lambda g, u: jnp.sum(plain(g, u) * cot), (0, 1))(gate, up)
  for a, r in zip(got, ref):
    assert a.dtype == dtype
    if dtype == BF16:
      _close(a, r.astype(BF16))
    else:
      np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, BF16])
def test_rope_backward_is_the_inverse_rotation(dtype):
  """apply_rope's hand-written VJP (rotate by -angle) equals autodiff of the rotation as written,
  in the same dtype: the same products, rounded the same way."""
  x = _rand(40, (2, 12, 3, 16)).astype(dtype)
  pos = jnp.array([np.arange(12), np.arange(3, 15)], jnp.int32)
  inv = inverse_frequencies(16, 10000.0)
  cot = _rand(41, x.shape).astype(dtype)

  def plain(x):
    angles = pos[..., None].astype(jnp.float32) * jnp.asarray(inv)
    angles = jnp.concatenate([angles, angles], -1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)
    return reference.rotate(x, cos, sin)

  np.testing.assert_array_equal(apply_rope(x, pos, inv), plain(x))
  got = jax.vjp(lambda x: apply_rope(x, pos, inv), x)[1](cot)[0]
  want = jax.vjp(plain, x)[1](cot)[0]
  assert got.dtype == dtype
  np.testing.assert_array_equal(got, want)
