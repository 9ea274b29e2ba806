"""Knowledge distillation: offline (teacher top-k store), online (KL / JSD), on-policy (GKD).

    python experiments/distill.py --config experiments/configs/distill.py --config.stage=teacher
    python experiments/distill.py --config experiments/configs/distill.py --config.stage=student
    python experiments/distill.py --config experiments/configs/distill.py --config.stage=online
    python experiments/distill.py --config experiments/configs/distill_demo.py     # compare

Stages (every key, its type and range: DISTILL in experiments/schemas.py):
  teacher  teacher.path over data.train -> top-k store in store.dir (ArrayRecord shards +
           manifest; batched, progress bar; rerunning finishes an interrupted store).
  student  trains the student on the store through grain: distill.kd_ratio * top-k/tail KD +
           (1 - kd_ratio) * CE. The store must match the student's tokenizer, data.train (when
           set) and distill.temperature, or the run fails naming the mismatch.
  online   trains against the running teacher (distill.divergence forward_kl | reverse_kl | jsd);
           onpolicy.fraction > 0 replaces that share of batches' responses with student samples.
  compare  the demo: the pretraining corpus split (held-out = every 100th chunk), then one
           student init trained twice for `steps` on the same batches -- distilled and CE only
           -- and both evaluated on held-out text (KL to the teacher, perplexity).
           compare.mode: online (the teacher scores each batch) or offline (teacher stage, then
           both read the store). Writes compare.png and summary.json in workdir.
Training stages write to workdir what finetune.py writes (checkpoints/, metrics.jsonl with
eval_kl / eval_ce, tensorboard/, summary.json), plus adapter/ and student/ (HF format).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling modules below
import build  # noqa: E402
from distill_setup import (
  RESUME_MAY_DIFFER,
  build_student,
  check_config,  # noqa: E402
  check_same_tokenizer,
  distill_loss,
  load_teacher,
  open_store,
  stage_teacher,
  store_batches,
  student_tokenizer,
  train,
)
from gemmax import cli  # noqa: E402
from gemmax.errors import ConfigError  # noqa: E402

__all__ = ["build_student", "check_config", "run", "stage_online", "stage_student", "stage_teacher"]


# --- stages (the teacher stage is in distill_setup.py, the compare stage in distill_compare.py) ---
def stage_student(c, mesh=None) -> dict:
  from gemmax.distill import TeacherStudent

  teacher = teacher_tok = None
  if c.teacher.path:  # only to measure held-out KL: offline batches never run it
    teacher, teacher_tok, _ = load_teacher(c, mesh)
  tok = student_tokenizer(c, teacher_tok)
  if tok is None:
    raise ConfigError("stage student without teacher.path needs student.tokenizer or student.path")
  student = build_student(c, teacher.config if teacher else None, mesh)
  store = open_store(c, tok, student.config.vocab_size)
  model = TeacherStudent(student, teacher) if teacher is not None else student
  return train(
    c,
    model,
    student,
    store_batches(c, store),
    build.eval_batches(c.data, tok, c.data.validation),
    distill_loss(c),
    c.workdir,
    mesh,
  )


def stage_online(c, mesh=None) -> dict:
  from gemmax.distill import OnPolicyBatches, TeacherStudent

  teacher, teacher_tok, _ = load_teacher(c, mesh)
  tok = student_tokenizer(c, teacher_tok)
  check_same_tokenizer(tok, teacher_tok)
  student = build_student(c, teacher.config, mesh)
  batches = build.batches(c.data, tok, c.data.train, c.seed)
  onpolicy = None
  if c.onpolicy.fraction > 0:
    o = c.onpolicy
    batches = onpolicy = OnPolicyBatches(
      batches,
      fraction=o.fraction,
      max_new_tokens=o.max_new_tokens,
      temperature=o.temperature,
      top_k=o.top_k or None,
      min_prompt=o.min_prompt,
      seed=c.seed,
      tokenizer=tok,
    )
  return train(
    c,
    TeacherStudent(student, teacher),
    student,
    batches,
    build.eval_batches(c.data, tok, c.data.validation),
    distill_loss(c),
    c.workdir,
    mesh,
    onpolicy,
  )


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  run(_CONFIG.value)


def run(c) -> dict:
  """Checks the config, claims the workdir (training stages) and runs the stage."""
  check_config(c)
  if c.stage == "teacher":
    return stage_teacher(c, build.mesh(c.mesh))
  from gemmax.train.workdir import claim_workdir

  claim_workdir(c.workdir, json.loads(c.to_json_best_effort()), RESUME_MAY_DIFFER)
  mesh = build.mesh(c.mesh)
  if c.stage == "compare":
    from distill_compare import stage_compare

    return stage_compare(c, mesh)
  summary = (stage_student if c.stage == "student" else stage_online)(c, mesh)
  print(
    f"done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
    f"{summary['final_loss']:.4f}, {summary['tokens_per_sec'] or 0:,.0f} tokens/s; "
    f"outputs in {c.workdir}"
  )
  return summary


if __name__ == "__main__":
  from ml_collections import config_flags

  # Defined here, not at import, so tests can import this module next to other scripts'.
  _CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file."
  )
  flags.mark_flags_as_required(["config"])
  cli.run(main)
