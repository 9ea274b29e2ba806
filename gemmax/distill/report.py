"""Measuring a distilled student: held-out KL to the teacher and perplexity, and their curves."""

from __future__ import annotations

import math

import jax
from flax import nnx

from gemmax.distill.chunked import DistillLoss
from gemmax.distill.step import model_distill_sums
from gemmax.errors import GemmaxError


def heldout_metrics(model, batches, *, temperature: float = 1.0, mesh=None) -> dict:
  """Token-weighted held-out numbers of a TeacherStudent over `batches` (gemmax.data batches):
  ce (nats/token of the student), perplexity = exp(ce), kl = KL(teacher || student) per token
  over the whole vocabulary at `temperature`, tokens."""
  model.eval()  # dropout off; a TeacherStudent runs its teacher whatever the kd_ratio
  graphdef, state = nnx.split(model)
  loss = DistillLoss(kd_ratio=0.0, temperature=temperature)

  @jax.jit
  def sums(state, batch):
    return model_distill_sums(nnx.merge(graphdef, state), batch, loss)

  totals = None
  for batch in batches:
    if mesh is not None:
      with jax.set_mesh(mesh):
        s = sums(state, batch)
    else:
      s = sums(state, batch)
    totals = s if totals is None else jax.tree.map(lambda a, b: a + b, totals, s)
  if totals is None:
    raise GemmaxError("heldout_metrics: no batches")
  t = jax.tree.map(float, jax.device_get(totals))
  n = max(t.count, 1.0)
  return {
    "ce": t.ce_sum / n,
    "perplexity": math.exp(t.ce_sum / n),
    "kl": t.kl_sum / n,
    "tokens": int(t.count),
  }


def plot_comparison(
  histories: dict, path: str, *, teacher_perplexity: float | None = None, title: str = ""
) -> str:
  """Held-out KL to the teacher and perplexity against step, one line per run, as one PNG.

  histories: {run name: metrics.jsonl lines with eval_kl / eval_ce}.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_kl, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
  for name, history in histories.items():
    evals = [h for h in history if "eval_kl" in h]
    steps = [h["step"] for h in evals]
    ax_kl.plot(steps, [h["eval_kl"] for h in evals], "o-", label=name)
    ax_ppl.plot(steps, [math.exp(h["eval_ce"]) for h in evals], "o-", label=name)
  if teacher_perplexity is not None:
    ax_ppl.axhline(teacher_perplexity, color="gray", ls="--", label="teacher")
  ax_kl.set_ylabel("held-out KL(teacher || student), nats/token")
  ax_ppl.set_ylabel("held-out perplexity")
  ax_ppl.set_yscale("log")
  for ax in (ax_kl, ax_ppl):
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path
