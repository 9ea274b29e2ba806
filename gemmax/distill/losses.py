"""Per-token distillation divergences on logits: dense (online) and top-k + tail (offline).

All functions take logits [..., V] (any leading shape), compute in float32 and return one value
per token [...]. `temperature` divides both models' logits before the softmax. P is the teacher,
Q the student throughout.

  forward_kl       KL(P || Q)                         mode-covering (the classic KD objective)
  reverse_kl       KL(Q || P)                         mode-seeking
  generalized_jsd  b KL(P || M) + (1 - b) KL(Q || M), M = b P + (1 - b) Q   (GKD's JSD(beta));
                   beta = 0 and 1 are defined as the forward and reverse KL, the limits of
                   JSD(beta) / beta and JSD(beta) / (1 - beta).
  topk_distill_loss  -sum_{i in top-k} p_i log q_i - p_tail log q_tail: the cross-entropy of the
                   teacher's (k + 1)-bucket distribution (k stored ids plus one bucket holding the
                   rest of the mass), which equals the dense soft-target CE when k = V.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gemmax.errors import GemmaxError

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
_NEG = -1e30  # finite "minus infinity": masked logsumexps stay finite, so gradients stay finite


def _log_softmax(logits, temperature):
  return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def _kl(logp, logq):
  """sum_v p (log p - log q) over the last axis; p = 0 entries contribute 0."""
  p = jnp.exp(logp)
  return jnp.sum(jnp.where(p > 0, p * (logp - logq), 0.0), axis=-1)


def forward_kl(teacher_logits, student_logits, temperature: float = 1.0):
  """KL(P_teacher || Q_student) per token: [..., V] x2 -> [...]."""
  return _kl(_log_softmax(teacher_logits, temperature), _log_softmax(student_logits, temperature))


def reverse_kl(teacher_logits, student_logits, temperature: float = 1.0):
  """KL(Q_student || P_teacher) per token: [..., V] x2 -> [...]."""
  return _kl(_log_softmax(student_logits, temperature), _log_softmax(teacher_logits, temperature))


def generalized_jsd(teacher_logits, student_logits, beta: float = 0.5, temperature: float = 1.0):
  """JSD(beta) per token (module docstring): [..., V] x2 -> [...]; beta in [0, 1]."""
  beta = float(beta)
  if not 0.0 <= beta <= 1.0:
    raise GemmaxError(f"generalized_jsd: beta must be in [0, 1], got {beta}")
  if beta == 0.0:
    return forward_kl(teacher_logits, student_logits, temperature)
  if beta == 1.0:
    return reverse_kl(teacher_logits, student_logits, temperature)
  logp = _log_softmax(teacher_logits, temperature)
  logq = _log_softmax(student_logits, temperature)
  # log M = log(b P + (1 - b) Q), formed in log space so tiny probabilities do not underflow
  logm = jnp.logaddexp(logp + jnp.log(beta), logq + jnp.log1p(-beta))
  return beta * _kl(logp, logm) + (1.0 - beta) * _kl(logq, logm)


def divergence(
  name: str, teacher_logits, student_logits, *, beta: float = 0.5, temperature: float = 1.0
):
  """Dispatch by name: "forward_kl" | "reverse_kl" | "jsd" (with `beta`)."""
  if name == "forward_kl":
    return forward_kl(teacher_logits, student_logits, temperature)
  if name == "reverse_kl":
    return reverse_kl(teacher_logits, student_logits, temperature)
  if name == "jsd":
    return generalized_jsd(teacher_logits, student_logits, beta, temperature)
  raise GemmaxError(f"unknown divergence {name!r}; expected one of {DIVERGENCES}")


def _not_in(ids, vocab: int):
  """[..., V] bool: True where the vocabulary entry is not one of `ids` [..., k]."""
  flat = ids.reshape(-1, ids.shape[-1])
  rows = jnp.arange(flat.shape[0])[:, None]
  hit = jnp.zeros((flat.shape[0], vocab), bool).at[rows, flat].set(True)
  return ~hit.reshape(*ids.shape[:-1], vocab)


def topk_student_logprobs(student_logits, topk_ids, temperature: float = 1.0):
  """(log q at the k ids [..., k], log q_tail of every other id [...]) at `temperature`."""
  logq = _log_softmax(student_logits, temperature)
  at_ids = jnp.take_along_axis(logq, topk_ids.astype(jnp.int32), axis=-1)
  rest = jnp.where(_not_in(topk_ids.astype(jnp.int32), logq.shape[-1]), logq, _NEG)
  return at_ids, jax.nn.logsumexp(rest, axis=-1)


def topk_distill_loss(student_logits, topk_ids, topk_probs, tail, temperature: float = 1.0):
  """-sum_k p_k log q_k - p_tail log q_tail per token.

  student_logits [..., V]; topk_ids [..., k] int (distinct within a token); topk_probs [..., k]
  and tail [...]: the teacher's probabilities at those ids and its remaining mass (kept, not
  renormalised away). Returns [...] float32.
  """
  logq_k, logq_tail = topk_student_logprobs(student_logits, topk_ids, temperature)
  p = topk_probs.astype(jnp.float32)
  tail = tail.astype(jnp.float32)
  # a zero tail (k = V, or all mass in the k ids) contributes nothing, whatever q_tail is
  tail_term = jnp.where(tail > 0, tail * logq_tail, 0.0)
  return -(jnp.sum(p * logq_k, axis=-1) + tail_term)


def topk_teacher_entropy(topk_probs, tail):
  """Entropy of the teacher's (k + 1)-bucket distribution per token: [..., k], [...] -> [...]."""
  p = topk_probs.astype(jnp.float32)
  tail = tail.astype(jnp.float32)
  xlogx = lambda x: jnp.where(x > 0, x * jnp.log(jnp.where(x > 0, x, 1.0)), 0.0)
  return -(jnp.sum(xlogx(p), axis=-1) + xlogx(tail))
