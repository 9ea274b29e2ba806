"""gemmax.distill losses: chunked sums vs direct dense computations, JSD limits, top-k + tail."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemmax import distill
from gemmax.distill import DistillLoss, distill_sums

B, T, D, DT, V = 2, 7, 16, 24, 40


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *shape: rng.normal(size=shape).astype(np.float32)
  m = (rng.random((B, T)) < 0.7).astype(np.int32)
  m[0, 0] = 1
  return f(B, T, D), f(D, V) * 0.7, f(B, T, DT), f(DT, V) * 0.7, rng.integers(0, V, (B, T)), m


def _cap(x, c):
  return x if c is None else np.tanh(x / c) * c


def _log_softmax(x):
  x = np.float64(x)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _dense_div(name, t_logits, s_logits, beta, temp):
  """Straight from the definitions, in float64 numpy."""
  lp, lq = _log_softmax(t_logits / temp), _log_softmax(s_logits / temp)
  p, q = np.exp(lp), np.exp(lq)
  kl = lambda a, la, lb: np.sum(a * (la - lb), -1)
  if name == "forward_kl":
    return kl(p, lp, lq)
  if name == "reverse_kl":
    return kl(q, lq, lp)
  mix = beta * p + (1 - beta) * q
  return beta * kl(p, lp, np.log(mix)) + (1 - beta) * kl(q, lq, np.log(mix))


@functools.partial(jax.jit, static_argnames=("loss", "softcap", "chunk"))
def _sums_and_grad(h, w, y, m, topk=None, teacher=None, *, loss, softcap=None, chunk=None):
  """(DistillSums, d loss_sum / d hidden), as one compiled program (not op by op)."""
  f = lambda h: (lambda s: (s.loss_sum, s))(
    distill_sums(h, w, y, m, loss=loss, softcap=softcap, topk=topk, teacher=teacher, chunk=chunk)
  )
  g, s = jax.grad(f, has_aux=True)(h)
  return s, g


@pytest.mark.parametrize(
  "name,beta,softcap", [("forward_kl", 0.5, None), ("reverse_kl", 0.5, 5.0), ("jsd", 0.3, 5.0)]
)
def test_online_chunked_matches_dense(name, beta, softcap):
  h, w, th, tw, y, m = _inputs()
  loss = DistillLoss(kd_ratio=0.6, temperature=1.5, divergence=name, beta=beta)
  sums = jax.jit(distill_sums, static_argnames=("loss", "softcap", "chunk"))
  s = sums(h, w, y, m, teacher=(th, tw, softcap), loss=loss, softcap=softcap, chunk=3)
  sl, tl = _cap(h @ w, softcap), _cap(th @ tw, softcap)
  mm = np.asarray(m, np.float64)
  kd = _dense_div(name, tl, sl, beta, 1.5)
  ce = -np.take_along_axis(_log_softmax(sl), y[..., None], -1)[..., 0]
  fkl = _dense_div("forward_kl", tl, sl, beta, 1.5)
  np.testing.assert_allclose(s.kd_sum, np.sum(kd * mm), rtol=1e-5)
  np.testing.assert_allclose(s.ce_sum, np.sum(ce * mm), rtol=1e-5)
  np.testing.assert_allclose(s.kl_sum, np.sum(fkl * mm), rtol=1e-5)
  np.testing.assert_allclose(s.loss_sum, np.sum((0.4 * ce + 0.6 * 1.5**2 * kd) * mm), rtol=1e-5)
  assert float(s.count) == float(mm.sum())
  # and the public per-token functions agree with the same definitions
  np.testing.assert_allclose(
    distill.divergence(name, tl, sl, beta=beta, temperature=1.5), kd, rtol=1e-5, atol=1e-7
  )


def test_jsd_beta_limits():
  rng = np.random.default_rng(3)
  tl, sl = rng.normal(size=(2, 5, V)) * 2
  fwd, rev = distill.forward_kl(tl, sl), distill.reverse_kl(tl, sl)
  np.testing.assert_array_equal(distill.generalized_jsd(tl, sl, 0.0), fwd)
  np.testing.assert_array_equal(distill.generalized_jsd(tl, sl, 1.0), rev)
  # and they are the limits of JSD(beta)/beta (beta -> 0) and JSD(beta)/(1 - beta) (beta -> 1)
  eps = 1e-4
  np.testing.assert_allclose(distill.generalized_jsd(tl, sl, eps) / eps, fwd, rtol=2e-2)
  np.testing.assert_allclose(distill.generalized_jsd(tl, sl, 1 - eps) / eps, rev, rtol=2e-2)
  assert np.all(np.asarray(distill.generalized_jsd(tl, sl, 0.5)) <= np.log(2) + 1e-6)
  with pytest.raises(ValueError, match="beta"):
    distill.generalized_jsd(tl, sl, 1.5)


def test_topk_with_k_equal_vocab_is_the_dense_loss():
  h, w, th, tw, y, m = _inputs(1)
  temp = 2.0
  p = np.exp(_log_softmax(th @ tw / temp))
  ids = np.argsort(-p, axis=-1).astype(np.int32)  # all V ids
  probs = np.take_along_axis(p, ids, -1).astype(np.float32)
  tail = np.zeros((B, T), np.float32)
  loss = DistillLoss(kd_ratio=1.0, temperature=temp)
  s, g_topk = _sums_and_grad(h, w, y, m, topk=(ids, probs, tail), loss=loss, chunk=4)
  dense, g_dense = _sums_and_grad(h, w, y, m, teacher=(th, tw, None), loss=loss, chunk=4)
  soft_ce = -np.sum(p * _log_softmax(h @ w / temp), -1)
  np.testing.assert_allclose(s.kd_sum, np.sum(soft_ce * m), rtol=1e-6)
  np.testing.assert_allclose(s.kl_sum, dense.kd_sum, rtol=1e-5, atol=1e-6)  # = forward KL
  np.testing.assert_allclose(g_topk, g_dense, rtol=1e-4, atol=1e-6)


def test_select_topk_and_gumbel():
  tl = np.random.default_rng(7).normal(size=(50, V)).astype(np.float32) * 2
  k, temp = 5, 1.3
  p = np.exp(_log_softmax(tl / temp))
  select = jax.jit(distill.select_topk, static_argnames=("k", "temperature"))
  ids, probs, tail = select(tl, k, temperature=temp)
  np.testing.assert_array_equal(ids, np.argsort(-tl, -1)[:, :k])
  g_ids, g_probs, g_tail = select(tl, k, temperature=temp, rng=jax.random.key(0))
  for i, pr, t in ((ids, probs, tail), (g_ids, g_probs, g_tail)):
    np.testing.assert_allclose(pr, np.take_along_axis(p, np.asarray(i), -1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(t) + np.asarray(pr).sum(-1), 1.0, rtol=1e-5)
    assert all(len(set(r)) == k for r in np.asarray(i).tolist())  # without replacement
  # sampled, not the top k: over 50 tokens some sampled set differs from the top-k set
  assert any(set(a) != set(b) for a, b in zip(np.asarray(ids).tolist(), np.asarray(g_ids).tolist()))


def test_topk_tail_term():
  """k < V: CE of the (k + 1)-bucket distribution, built densely; the tail is kept."""
  h, w, th, tw, y, m = _inputs(2)
  k, temp = 5, 1.3
  p = np.exp(_log_softmax(th @ tw / temp))
  ids = np.argsort(-p, -1)[..., :k]
  probs = np.take_along_axis(p, ids, -1)
  tail = 1.0 - probs.sum(-1)
  loss = DistillLoss(temperature=temp)
  f32 = lambda x: np.float32(x)
  s, _ = _sums_and_grad(h, w, y, m, topk=(ids, f32(probs), f32(tail)), loss=loss)
  q = np.exp(_log_softmax(h @ w / temp))
  qk = np.take_along_axis(q, ids, -1)
  per_tok = -(np.sum(probs * np.log(qk), -1) + tail * np.log(1.0 - qk.sum(-1)))
  np.testing.assert_allclose(s.kd_sum, np.sum(per_tok * m), rtol=1e-5)
  # dropping the tail term would give a different (smaller) loss: it is really there
  no_tail, _ = _sums_and_grad(h, w, y, m, topk=(ids, f32(probs), f32(0 * tail)), loss=loss)
  assert float(s.kd_sum) > float(no_tail.kd_sum) + 1e-3
  # coarse KL = CE - coarse teacher entropy >= 0
  assert float(s.kl_sum) >= 0


def test_mask_and_kd_ratio_zero():
  from gemmax.train import cross_entropy_sums

  h, w, th, tw, y, m = _inputs(4)
  s, _ = _sums_and_grad(h, w, y, 0 * m, teacher=(th, tw, None), loss=DistillLoss())
  assert float(s.loss_sum) == 0 and float(s.count) == 0
  ce_only, g = _sums_and_grad(h, w, y, m, teacher=(th, tw, None), loss=DistillLoss(kd_ratio=0.0))
  ref, g_ref = jax.jit(jax.value_and_grad(lambda h: cross_entropy_sums(h, w, y, m).loss_sum))(h)
  np.testing.assert_allclose(ce_only.loss_sum, ref, rtol=1e-6)
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)
  assert float(ce_only.kd_sum) > 0  # still reported as a metric


def test_teacher_gets_no_gradient():
  h, w, th, tw, y, m = _inputs(5)

  @jax.jit
  def grads(th, tw):
    f = lambda th, tw, name: (
      distill_sums(h, w, y, m, loss=DistillLoss(divergence=name), teacher=(th, tw, None)).loss_sum
    )
    return [
      jax.grad(f, argnums=(0, 1))(th, tw, name) for name in ("forward_kl", "reverse_kl", "jsd")
    ]

  for g_th, g_tw in grads(th, tw):
    assert not np.any(np.asarray(g_th)) and not np.any(np.asarray(g_tw))


@pytest.mark.slow  # ~15 s of compiling; the CLI tests train TeacherStudent pairs by default
def test_train_step_updates_only_the_student():
  """Through gemmax.train: a TeacherStudent pair (teacher of another size), full and DoRA."""
  import optax
  from gemmax import peft
  from gemmax.models import ModelConfig, Transformer
  from gemmax.train import make_train_step, split_model

  # the teacher is deeper than the student (same widths: their inits share compiled ops)
  teacher = Transformer(
    ModelConfig.preset("gemma2-tiny", num_hidden_layers=2, vocab_size=64), rngs=nnx.Rngs(1)
  )
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 64, (2, 9)).astype(np.int32)
  batch = {
    "input_ids": ids[:, :-1],
    "targets": ids[:, 1:],
    "loss_mask": np.ones((2, 8), np.int32),
    "segment_ids": np.ones((2, 8), np.int32),
    "positions": np.tile(np.arange(8, dtype=np.int32), (2, 1)),
  }
  before = jax.tree.map(np.array, nnx.state(teacher, nnx.Param))
  for method in ("dora", "full"):
    student = Transformer(
      ModelConfig.preset("gemma2-tiny", num_hidden_layers=1, vocab_size=64), rngs=nnx.Rngs(2)
    )
    if method == "dora":
      peft.apply(student, "dora", rank=2)
    pair = distill.TeacherStudent(student, teacher)
    split = split_model(pair, distill.student_filter(pair))
    paths = [
      jax.tree_util.keystr(p)
      for p, _ in jax.tree_util.tree_flatten_with_path(split.params.to_pure_dict())[0]
    ]
    assert paths and all(p.startswith("['student']") for p in paths), paths[:3]
    if method == "dora":  # adapters only (A, B, magnitudes); the step below trains full
      assert all("lora" in p or "magnitude" in p for p in paths), paths[:3]
      continue
    assert len(paths) == len(jax.tree.leaves(nnx.state(student, nnx.Param)))
    tx = optax.adam(1e-2)
    opt_state = tx.init(split.params)
    step = make_train_step(
      split.train_def,
      tx,
      loss_fn=distill.distill_loss_fn(DistillLoss(kd_ratio=0.5, divergence="jsd")),
    )
    params, _, metrics = step(split.params, opt_state, split.rest, batch, jax.random.key(0))
    for key in ("loss", "ce", "kd", "kl", "accuracy", "tokens", "grad_norm"):
      assert np.isfinite(float(metrics[key])), key
    assert float(metrics["tokens"]) == 16
    after = nnx.state(teacher, nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, after))


def test_accumulated_custom_sums_equal_one_batch():
  """make_train_step with a custom loss_fn: micro-batch sums add up to the full batch's."""
  import optax
  from typing import NamedTuple
  from gemmax.train import make_train_step, split_model

  class Sums(NamedTuple):
    loss_sum: jax.Array
    correct: jax.Array
    count: jax.Array
    sq_sum: jax.Array

  def loss_fn(model, batch, chunk=None):
    err = model(batch["x"]) - batch["y"]
    return Sums(jnp.sum(err**2), jnp.zeros(()), jnp.float32(err.size), jnp.sum(err**2))

  rng = np.random.default_rng(0)
  batch = {
    "x": rng.normal(size=(4, 3)).astype(np.float32),
    "y": rng.normal(size=(4, 2)).astype(np.float32),
  }
  out = []
  for accum in (1, 2):
    split = split_model(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    tx = optax.sgd(0.1)
    step = make_train_step(split.train_def, tx, accum_steps=accum, loss_fn=loss_fn)
    out.append(step(split.params, tx.init(split.params), split.rest, batch, jax.random.key(0)))
  (p1, _, m1), (p2, _, m2) = out
  assert set(m1) >= {"loss", "sq", "tokens", "grad_norm"}
  np.testing.assert_allclose(m1["sq"], m2["sq"], rtol=1e-6)
  np.testing.assert_allclose(m1["tokens"], 8.0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p1, p2)
