"""experiments/distill.py's config checks and the pieces its stages share: teacher, student (built
by experiments/build.py), tokenizers, the teacher store and its batches, the distillation loss and
the training run. The teacher stage lives here too because the compare stage (distill_compare.py)
reuses it."""

from __future__ import annotations

import json
import math
import os
import time

from gemmax import schema
from gemmax.data.corpus import CORPORA
from gemmax.errors import ConfigError

import build
from schemas import DISTILL

RESUME_MAY_DIFFER = schema.may_differ(DISTILL)  # keys that do not change the trained weights


def check_config(c) -> None:
  """Raises ConfigError naming the first unknown, missing or out-of-range key (the schema,
  experiments/schemas.py), then what relates several keys and the paths named."""
  schema.check(c, DISTILL)
  o = c.onpolicy
  training = c.stage in ("student", "online", "compare")
  checks = [
    (
      not (c.stage == "online" and o.fraction > 0 and c.data.packing),
      "on-policy sampling (onpolicy.fraction > 0) needs data.packing = False",
    ),
    (
      c.data.batch_size % c.optimizer.grad_accum == 0,
      f"data.batch_size {c.data.batch_size} must be a multiple of optimizer.grad_accum "
      f"{c.optimizer.grad_accum}",
    ),
    (bool(c.teacher.path) or c.stage == "student", f"stage {c.stage} needs teacher.path"),
    (
      not training or bool(c.student.path) != bool(c.student.preset),
      "set exactly one of student.path and student.preset",
    ),
    (c.stage in ("student", "compare") or bool(c.data.train), "data.train is empty"),
    (c.stage == "teacher" or bool(c.workdir), "workdir is empty"),
    (c.stage != "student" or bool(c.store.dir), "stage student needs store.dir"),
    (
      c.stage != "compare" or c.eval_every > 0,
      "stage compare reports held-out KL and perplexity: eval_every must be > 0",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
  if c.stage == "compare" and not (c.compare.corpus in CORPORA or os.path.isfile(c.compare.corpus)):
    raise ConfigError(
      f"compare.corpus: {c.compare.corpus} is neither a file nor a corpus name "
      f"({', '.join(CORPORA)})"
    )
  for name in ("train", "validation"):
    if c.data[name] and c.stage != "compare" and not os.path.exists(c.data[name]):
      raise ConfigError(f"data.{name}: {c.data[name]} does not exist")
  for name in ("teacher.path", "student.path"):
    section, key = name.split(".")
    if c[section][key] and not os.path.isdir(c[section][key]):
      raise ConfigError(f"{name}: {c[section][key]} is not a directory")


# --- building blocks (experiments/build.py builds what every script builds) ----------------------
def load_teacher(c, mesh=None):
  """The frozen teacher, its tokenizer and a fingerprint of its checkpoint directory."""
  from gemmax.distill import model_fingerprint

  teacher = build.model(c.teacher, mesh=mesh)
  build.check_context(c.data.seq_len, teacher, "teacher")
  tok = build.tokenizer(c.teacher.path, teacher.config.vocab_size)
  return teacher, tok, model_fingerprint(c.teacher.path)


def build_student(c, teacher_config=None, mesh=None):
  """The student (HF dir, or a random preset taking the teacher's vocabulary and special ids),
  with LoRA/DoRA adapters for method lora/dora."""
  inherit = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")
  inherit = {k: getattr(teacher_config, k) for k in inherit} if teacher_config else {}
  model = build.model(c.student, c.seed, mesh, "student", **inherit)
  build.check_context(c.data.seq_len, model, "student")
  return build.adapters(model, c, mesh)


def student_tokenizer(c, teacher_tok=None):
  from gemmax import data

  path = c.student.tokenizer or c.student.path
  return data.load_tokenizer(path) if path else teacher_tok


def check_same_tokenizer(student_tok, teacher_tok):
  if student_tok.fingerprint != teacher_tok.fingerprint:
    raise ConfigError(
      f"student tokenizer {student_tok.path} differs from the teacher's "
      f"{teacher_tok.path} (sha256 {student_tok.fingerprint[:12]}... vs "
      f"{teacher_tok.fingerprint[:12]}...): distillation needs one tokenizer"
    )


def distill_loss(c, kd_ratio=None):
  from gemmax.distill import DistillLoss

  kw = c.distill.to_dict()  # the section's keys are DistillLoss's fields
  if kd_ratio is not None:
    kw["kd_ratio"] = kd_ratio
  return DistillLoss(**kw)


def train(c, model, student, train_data, evaluate, loss, workdir, mesh=None, onpolicy=None):
  """The gemmax.train Trainer with the distillation loss; saves the student; returns summary."""
  from gemmax import peft
  from gemmax.convert import save_hf
  from gemmax.distill import distill_loss_fn, student_filter
  from gemmax.models import param_count
  from gemmax.train import Trainer
  from gemmax.train.workdir import write_atomic

  opt = build.optimizer(c)
  loop = build.loop(c, evaluate is not None, workdir=workdir, save_adapter=False)
  trainer = Trainer(
    model,
    opt,
    loop,
    train_data=train_data,
    eval_data=evaluate,
    mesh=mesh,
    trainable=student_filter(model),
    loss_fn=distill_loss_fn(loss),
  )
  if onpolicy is not None:
    onpolicy.bind(trainer)
  summary = trainer.run()
  summary.update(
    student_params=param_count(student.config),
    kd_ratio=loss.kd_ratio,
    trainable_params=trainer.trainable_params,
    temperature=loss.temperature,
  )
  summary.pop("total_params", None)  # would count the teacher
  if onpolicy is not None:
    summary["onpolicy_batches"] = onpolicy.sampled
  if peft.has_adapters(student):
    summary["adapter"] = os.path.join(workdir, "adapter")
    peft.save_adapter(student, summary["adapter"])
  if c.save_student:
    summary["student"] = os.path.join(workdir, "student")
    save_hf(peft.merge(student) if peft.has_adapters(student) else student, summary["student"])
  write_atomic(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
  return summary


def _store_dir(c):
  return c.store.dir or os.path.join(c.workdir, "store")


def open_store(c, tok, vocab_size, dataset_path=None):
  """The store, checked against the student's tokenizer, the dataset and the temperature."""
  from gemmax.distill import StoreError, TopKStore, dataset_fingerprint

  store = TopKStore(_store_dir(c))
  path = dataset_path or c.data.train
  store.check(
    tokenizer=tok,
    vocab_size=vocab_size,
    dataset=dataset_fingerprint(build.source(c.data, path)) if path else None,
  )
  if not math.isclose(store.temperature, c.distill.temperature):
    raise StoreError(
      f"{store.directory}: the store holds teacher probabilities at temperature "
      f"{store.temperature}, but distill.temperature is {c.distill.temperature}; "
      f"set it to {store.temperature} or rerun the teacher stage"
    )
  return store


def store_batches(c, store):
  from gemmax.distill import store_pipeline

  return store_pipeline(store, build.data_config(c.data, c.seed))


def stage_teacher(c, mesh=None, loaded=None, train_path=None) -> dict:
  from gemmax.distill import write_teacher_store

  teacher, tok, fingerprint = loaded or load_teacher(c, mesh)
  t0 = time.perf_counter()
  manifest = write_teacher_store(
    teacher,
    tok,
    build.source(c.data, train_path or c.data.train),
    _store_dir(c),
    k=c.store.k,
    temperature=c.distill.temperature,
    sampling=c.store.sampling,
    seed=c.seed,
    seq_len=c.data.seq_len,
    batch_size=c.store.batch_size,
    num_shards=c.store.num_shards,
    teacher_id=fingerprint,
    teacher_path=c.teacher.path,
    mesh=mesh,
    progress=c.progress,
    on_bad_rows=c.data.on_bad_rows,
  )
  st = manifest.get("stats", {})
  print(
    f"teacher store {_store_dir(c)}: {st.get('examples', 0):,} examples, "
    f"{st.get('tokens', 0):,} tokens, k={c.store.k}, {st.get('bytes_per_token', 0):.1f} "
    f"bytes/token ({time.perf_counter() - t0:.0f} s)"
  )
  return manifest
