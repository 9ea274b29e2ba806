"""experiments/distill.py's config schema and the pieces its stages build: mesh, teacher, student,
tokenizers, data pipelines (text and teacher store), the distillation loss and the training run.
The teacher stage lives here too because the compare stage (distill_compare.py) reuses it."""

from __future__ import annotations

import json
import math
import os
import time

from gemmax import schema
from gemmax.data.corpus import CORPORA
from gemmax.errors import ConfigError
from schemas import DISTILL

STAGES = ("teacher", "student", "online", "compare")
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


# --- building blocks ----------------------------------------------------------------------------
def build_mesh(c):
  import jax
  from gemmax import sharding

  mesh = sharding.make_mesh(data=c.mesh.data, fsdp=c.mesh.fsdp, tensor=c.mesh.tensor)
  return None if jax.device_count() == 1 else mesh


def check_context(c, model, who: str) -> None:
  """data.seq_len must fit the model's positions (positions past them were never trained)."""
  limit = model.config.max_position_embeddings
  if c.data.seq_len > limit:
    raise ConfigError(
      f"data.seq_len {c.data.seq_len} is longer than the {who}'s max_position_embeddings {limit}"
    )


def load_teacher(c, mesh=None):
  """The frozen teacher, its tokenizer and a fingerprint of its checkpoint directory."""
  from gemmax import data
  from gemmax.convert import load_hf
  from gemmax.distill import model_fingerprint

  teacher = load_hf(c.teacher.path, compute_dtype=c.teacher.dtype or None, mesh=mesh)
  check_context(c, teacher, "teacher")
  tok = data.load_tokenizer(c.teacher.path)
  data.check_vocab(tok, teacher.config.vocab_size)
  return teacher, tok, model_fingerprint(c.teacher.path)


def build_student(c, teacher_config=None, mesh=None):
  """The student (HF dir, or a random preset taking the teacher's vocabulary and special ids),
  with LoRA/DoRA adapters for method lora/dora."""
  from flax import nnx
  from gemmax import peft, sharding
  from gemmax.convert import load_hf
  from gemmax.models import ModelConfig, Transformer, create_sharded

  s = c.student
  if s.path:
    model = load_hf(
      s.path, dtype=s.param_dtype or None, compute_dtype=s.dtype, mesh=mesh, remat=s.remat
    )
  else:
    inherit = {}
    if teacher_config is not None:
      inherit = {
        k: getattr(teacher_config, k)
        for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")
      }
    try:
      cfg = ModelConfig.preset(
        s.preset,
        **{
          **inherit,
          **s.overrides.to_dict(),
          "dtype": s.dtype,
          "param_dtype": s.param_dtype or "float32",
          "remat": s.remat,
        },
      )
    except TypeError as e:
      raise ConfigError(f"student.overrides: {e}") from None
    model = (
      create_sharded(cfg, mesh, c.seed)
      if mesh is not None
      else Transformer(cfg, rngs=nnx.Rngs(c.seed))
    )
  check_context(c, model, "student")
  if c.method != "full":
    targets = c.lora.targets
    if isinstance(targets, str) and "," in targets:
      targets = [t.strip() for t in targets.split(",") if t.strip()]
    peft.apply(
      model,
      method=c.method,
      rank=c.lora.rank,
      alpha=c.lora.alpha,
      targets=targets,
      dropout=c.lora.dropout,
      rslora=c.lora.rslora,
      rngs=nnx.Rngs(params=c.seed, dropout=c.seed + 1),
    )
    if mesh is not None:
      sharding.shard_model(model, mesh)
  return model


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


def spec(c, path):
  from gemmax import data

  return data.SourceSpec(path, kind=c.data.format, template=c.data.template)


def eval_factory(c, tok, path):
  from gemmax import data

  if not path:
    return None
  cfg = data.DataConfig(
    seq_len=c.data.seq_len,
    batch_size=c.data.eval_batch_size,
    shuffle=False,
    num_epochs=1,
    packing=c.data.packing,
    prefetch=0,
    on_bad_rows=c.data.on_bad_rows,
  )
  return data.make_eval_pipeline(spec(c, path), tok, cfg)


def distill_loss(c, kd_ratio=None):
  from gemmax.distill import DistillLoss

  d = c.distill
  return DistillLoss(
    kd_ratio=d.kd_ratio if kd_ratio is None else kd_ratio,
    temperature=d.temperature,
    divergence=d.divergence,
    beta=d.beta,
  ).validate()


def train(c, model, student, train_data, evaluate, loss, workdir, mesh=None, onpolicy=None):
  """The gemmax.train Trainer with the distillation loss; saves the student; returns summary."""
  from gemmax import peft
  from gemmax.convert import save_hf
  from gemmax.distill import distill_loss_fn, student_filter
  from gemmax.models import param_count
  from gemmax.train import OptimizerConfig, Trainer, TrainerConfig
  from gemmax.train.workdir import write_atomic

  o = c.optimizer
  opt = OptimizerConfig(
    learning_rate=o.learning_rate,
    warmup_steps=o.warmup_steps,
    steps=c.steps,
    end_lr_fraction=o.end_lr_fraction,
    b1=o.b1,
    b2=o.b2,
    weight_decay=o.weight_decay,
    clip_norm=o.clip_norm or None,
  )
  loop = TrainerConfig(
    workdir=workdir,
    steps=c.steps,
    accum_steps=o.grad_accum,
    log_every=c.log_every,
    eval_every=c.eval_every if evaluate else 0,
    eval_batches=c.eval_batches,
    checkpoint_every=c.checkpoint_every,
    keep_checkpoints=c.keep_checkpoints,
    seed=c.seed,
    progress=c.progress,
    save_adapter=False,
  )
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
    dataset=dataset_fingerprint(spec(c, path)) if path else None,
  )
  if not math.isclose(store.temperature, c.distill.temperature):
    raise StoreError(
      f"{store.directory}: the store holds teacher probabilities at temperature "
      f"{store.temperature}, but distill.temperature is {c.distill.temperature}; "
      f"set it to {store.temperature} or rerun the teacher stage"
    )
  return store


def store_batches(c, store):
  from gemmax import data
  from gemmax.distill import store_pipeline

  return store_pipeline(
    store,
    data.DataConfig(
      seq_len=c.data.seq_len,
      batch_size=c.data.batch_size,
      seed=c.seed,
      packing=c.data.packing,
      worker_count=c.data.workers,
    ),
  )


def text_batches(c, tok, path):
  from gemmax import data

  return data.make_pipeline(
    spec(c, path),
    tok,
    data.DataConfig(
      seq_len=c.data.seq_len,
      batch_size=c.data.batch_size,
      seed=c.seed,
      packing=c.data.packing,
      worker_count=c.data.workers,
      on_bad_rows=c.data.on_bad_rows,
    ),
  )


def stage_teacher(c, mesh=None, loaded=None, train_path=None) -> dict:
  from gemmax.distill import write_teacher_store

  teacher, tok, fingerprint = loaded or load_teacher(c, mesh)
  t0 = time.perf_counter()
  manifest = write_teacher_store(
    teacher,
    tok,
    spec(c, train_path or c.data.train),
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
