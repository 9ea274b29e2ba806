"""Distillation loss sums over token chunks: ground-truth CE mixed with a teacher term.

Like gemmax.train.losses.cross_entropy_sums, the [batch, seq, vocab] logits are never built:
tokens go `chunk` at a time through gemmax.models.head.scan_logits, rematerialised so the
backward pass recomputes each chunk's logits (the student's, and the teacher's when it runs
online) instead of keeping them.

Per scored token (loss_mask = 1), with kd_ratio a and temperature t:
  loss = (1 - a) * CE(targets) + a * t^2 * KD
KD is `topk_distill_loss` against stored teacher top-k (offline) or a divergence against the
teacher's logits (online). t^2 keeps the KD gradient's scale independent of t (Hinton et al.).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from gemmax.distill import losses
from gemmax.errors import GemmaxError
from gemmax.models.head import DEFAULT_LOGIT_BUDGET, Head, chunk_tokens_for, scan_logits
from gemmax.schema import above, between, check_fields, one_of


class DistillSums(NamedTuple):
  """Sums over scored tokens. loss_sum is the objective; every other `<x>_sum` is logged as x.

  kd: the distillation term as optimised; kl: KL(teacher || student) at the temperature (over
  the vocabulary online, over the k stored ids + tail bucket offline, a lower bound of the full
  KL); ce: ground-truth next-token CE; correct: argmax hits.
  """

  loss_sum: jax.Array
  correct: jax.Array
  count: jax.Array
  ce_sum: jax.Array
  kd_sum: jax.Array
  kl_sum: jax.Array


# The ranges of DistillLoss's fields (experiments/schemas.py checks a recipe's distill keys by them).
RULES = {
  "kd_ratio": between(0, 1),
  "temperature": above(0),
  "divergence": one_of(*losses.DIVERGENCES),
  "beta": between(0, 1),
}


@dataclasses.dataclass(frozen=True)
class DistillLoss:
  """The recipe: kd_ratio a mixes a*KD + (1-a)*CE; divergence/beta are for the online teacher."""

  kd_ratio: float = 1.0
  temperature: float = 1.0
  divergence: str = "forward_kl"  # forward_kl | reverse_kl | jsd (online only)
  beta: float = 0.5  # JSD(beta) mixture weight of the teacher

  def validate(self):
    return check_fields(self, RULES, "distill.")


def distill_sums(
  hidden,
  weight,
  targets,
  loss_mask,
  *,
  loss: DistillLoss = DistillLoss(),
  softcap: Optional[float] = None,
  topk=None,
  teacher=None,
  chunk: Optional[int] = None,
  vocab_major: bool = False,
) -> DistillSums:
  """Masked sums of the mixed loss, chunked over tokens.

  hidden [B, T, D], weight [D, V] ([V, D] with `vocab_major`): the student's final hidden states
  and output projection;
  targets, loss_mask [B, T]. The teacher is one of
    topk=(ids [B, T, k] int, probs [B, T, k], tail [B, T])        offline, stored top-k
    teacher=(hidden [B, T, Dt], weight [Dt, V], softcap or None)  online; gets no gradient
  or neither (the objective is then the plain CE; kd and kl are 0).
  """
  loss.validate()
  if topk is not None and teacher is not None:
    raise GemmaxError("distill_sums: pass topk (offline) or teacher (online), not both")
  b, t, d = hidden.shape
  v = weight.shape[0 if vocab_major else 1]
  if targets.shape != (b, t) or loss_mask.shape != (b, t):
    raise GemmaxError(f"targets {targets.shape} and loss_mask {loss_mask.shape} must be [{b}, {t}]")
  if teacher is not None and teacher[1].shape[1] != v:
    raise GemmaxError(f"teacher vocabulary {teacher[1].shape[1]} != student vocabulary {v}")
  n = b * t
  # two [chunk, V] float32 arrays live at once (the teacher's logits or the top-k id mask)
  chunk = chunk or chunk_tokens_for(v, n, DEFAULT_LOGIT_BUDGET // 2)
  flat = lambda x: x.reshape(n, *x.shape[2:])  # noqa: E731
  xs = {"y": flat(targets.astype(jnp.int32)), "m": flat(loss_mask.astype(jnp.float32))}
  if topk is not None:
    ids, probs, tail = topk
    if ids.shape[:2] != (b, t) or probs.shape != ids.shape or tail.shape != (b, t):
      raise GemmaxError(
        f"top-k arrays {ids.shape}, {probs.shape}, {tail.shape} do not match "
        f"[{b}, {t}, k], [{b}, {t}, k], [{b}, {t}]"
      )
    xs.update(ids=flat(ids.astype(jnp.int32)), p=flat(probs), tail=flat(tail))
  t_head = None
  if teacher is not None:
    t_h, t_w, t_cap = teacher
    xs["th"] = flat(jax.lax.stop_gradient(t_h))
    t_head = Head(jax.lax.stop_gradient(t_w).astype(t_h.dtype), False, t_cap)
  # without a teacher the objective is the plain CE, whatever kd_ratio says
  a = float(loss.kd_ratio) if topk is not None or teacher is not None else 0.0
  temp = float(loss.temperature)

  def chunk_sums(acc, logits, x):
    m = jnp.where(x["valid"], x["m"], 0.0)
    lse = jax.nn.logsumexp(logits, axis=-1)
    ce = lse - jnp.take_along_axis(logits, x["y"][:, None], axis=-1)[:, 0]
    correct = (jnp.argmax(logits, axis=-1) == x["y"]).astype(jnp.float32)
    zero = jnp.zeros_like(ce)
    kd, kl = zero, zero
    # with a = 0 the teacher term is only a metric: keep it out of the backward pass
    student = logits if a > 0 else jax.lax.stop_gradient(logits)
    if "ids" in x:
      kd = losses.topk_distill_loss(student, x["ids"], x["p"], x["tail"], temp)
      kl = kd - losses.topk_teacher_entropy(x["p"], x["tail"])
    elif "th" in x:
      t_logits = t_head.logits(x["th"])
      kd = losses.divergence(loss.divergence, t_logits, student, beta=loss.beta, temperature=temp)
      kl = kd if loss.divergence == "forward_kl" else losses.forward_kl(t_logits, student, temp)
    if a == 0.0:
      obj = ce
    elif a == 1.0:
      obj = (temp * temp) * kd
    else:
      obj = (1.0 - a) * ce + (a * temp * temp) * kd
    sums = [jnp.sum(x * m) for x in (obj, correct, ce, kd, kl)]
    return tuple(c + s for c, s in zip(acc, sums)), None

  zero = jnp.zeros((), jnp.float32)
  head = Head(weight.astype(hidden.dtype), vocab_major, softcap)
  # remat: the backward recomputes each chunk's logits (the student's, and the teacher's online)
  (obj, correct, ce, kd, kl), _ = scan_logits(
    chunk_sums, (zero,) * 5, hidden.reshape(n, d), head, xs, chunk=chunk, remat=True
  )
  sg = jax.lax.stop_gradient
  return DistillSums(obj, sg(correct), jnp.sum(xs["m"]), sg(ce), sg(kd), sg(kl))
