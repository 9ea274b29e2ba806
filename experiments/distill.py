"""Knowledge distillation: offline (teacher top-k store), online (KL / JSD), on-policy (GKD).

    python experiments/distill.py --config experiments/configs/distill.py --config.stage=teacher
    python experiments/distill.py --config experiments/configs/distill.py --config.stage=student
    python experiments/distill.py --config experiments/configs/distill.py --config.stage=online
    python experiments/distill.py --config experiments/configs/distill_demo.py     # compare

Stages (experiments/configs/distill.py lists every field):
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
import math
import os
import time

from absl import app, flags, logging

from gemmax import cli
from gemmax.errors import ConfigError

STAGES = ("teacher", "student", "online", "compare")
SCHEMA = {
    "teacher": {"path", "dtype"},
    "student": {"path", "preset", "overrides", "tokenizer", "dtype", "param_dtype", "remat"},
    "lora": {"rank", "alpha", "targets", "dropout", "rslora"},
    "data": {"train", "validation", "format", "template", "seq_len", "packing", "batch_size",
             "eval_batch_size", "workers", "on_bad_rows"},
    "store": {"dir", "k", "sampling", "num_shards", "batch_size"},
    "distill": {"kd_ratio", "temperature", "divergence", "beta"},
    "onpolicy": {"fraction", "max_new_tokens", "temperature", "top_k", "min_prompt"},
    "compare": {"mode", "corpus", "chunk_chars", "holdout_every", "train_chunks",
                "heldout_chunks"},
    "mesh": {"data", "fsdp", "tensor"},
    "optimizer": {"learning_rate", "warmup_steps", "end_lr_fraction", "b1", "b2", "weight_decay",
                  "clip_norm", "grad_accum"},
    "": {"stage", "method", "steps", "log_every", "eval_every", "eval_batches",
         "checkpoint_every", "keep_checkpoints", "save_student", "progress", "workdir", "seed"},
}
FREE_FORM = ("student.overrides",)  # ModelConfig fields; checked when the student is built
RESUME_MAY_DIFFER = ("progress", "log_every", "eval_every", "eval_batches", "checkpoint_every",
                     "keep_checkpoints", "save_student", "workdir", "data.workers",
                     "data.eval_batch_size", "data.validation", "store.batch_size", "mesh.data",
                     "mesh.fsdp", "mesh.tensor")


def check_config(c) -> None:
  """Raises ConfigError naming the first unknown or missing key or invalid value."""
  for key, value in c.items():
    if key and key in SCHEMA:
      for sub in value.keys():
        if sub not in SCHEMA[key]:
          raise ConfigError(f"unknown config key '{key}.{sub}' "
                            f"(known: {', '.join(sorted(SCHEMA[key]))})")
    elif key not in SCHEMA[""]:
      raise ConfigError(f"unknown config key '{key}'")
  missing = [f"{s}.{k}" if s else k for s, keys in SCHEMA.items() for k in keys
             if (c.get(s, {}) if s else c).get(k, "<missing>") == "<missing>"]
  if missing:
    raise ConfigError(f"config lacks key(s) {', '.join(missing)}")
  d, s, o = c.distill, c.store, c.onpolicy
  training = c.stage in ("student", "online", "compare")
  checks = [
      (c.stage in STAGES, f"stage must be one of {'|'.join(STAGES)}, got {c.stage!r}"),
      (c.method in ("full", "lora", "dora"), f"method must be full|lora|dora, got {c.method!r}"),
      (0.0 <= d.kd_ratio <= 1.0, f"distill.kd_ratio must be in [0, 1], got {d.kd_ratio}"),
      (d.temperature > 0, f"distill.temperature must be > 0, got {d.temperature}"),
      (d.divergence in ("forward_kl", "reverse_kl", "jsd"),
       f"distill.divergence must be forward_kl|reverse_kl|jsd, got {d.divergence!r}"),
      (0.0 <= d.beta <= 1.0, f"distill.beta must be in [0, 1], got {d.beta}"),
      (s.k >= 1, f"store.k must be >= 1, got {s.k}"),
      (s.sampling in ("topk", "gumbel"), f"store.sampling must be topk|gumbel, got {s.sampling!r}"),
      (s.num_shards >= 1 and s.batch_size >= 1,
       f"store.num_shards and store.batch_size must be >= 1, got {s.num_shards}, {s.batch_size}"),
      (0.0 <= o.fraction <= 1.0, f"onpolicy.fraction must be in [0, 1], got {o.fraction}"),
      (o.max_new_tokens >= 1, f"onpolicy.max_new_tokens must be >= 1, got {o.max_new_tokens}"),
      (not (c.stage == "online" and o.fraction > 0 and c.data.packing),
       "on-policy sampling (onpolicy.fraction > 0) needs data.packing = False"),
      (c.data.seq_len >= 2, f"data.seq_len must be >= 2, got {c.data.seq_len}"),
      (c.data.format in ("alpaca", "chat", "text"),
       f"data.format must be alpaca|chat|text, got {c.data.format!r}"),
      (c.data.on_bad_rows in ("fail", "skip"),
       f"data.on_bad_rows must be fail|skip, got {c.data.on_bad_rows!r}"),
      (c.optimizer.learning_rate > 0,
       f"optimizer.learning_rate must be > 0, got {c.optimizer.learning_rate}"),
      (c.optimizer.grad_accum > 0 and c.data.batch_size % c.optimizer.grad_accum == 0,
       f"data.batch_size {c.data.batch_size} must be a multiple of optimizer.grad_accum "
       f"{c.optimizer.grad_accum}"),
      (c.steps > 0 and c.log_every > 0,
       f"steps and log_every must be > 0, got {c.steps}, {c.log_every}"),
      (c.method == "full" or c.lora.rank > 0, f"lora.rank must be > 0, got {c.lora.rank}"),
      (bool(c.teacher.path) or c.stage == "student",
       f"stage {c.stage} needs teacher.path"),
      (not training or bool(c.student.path) != bool(c.student.preset),
       "set exactly one of student.path and student.preset"),
      (c.stage in ("student", "compare") or bool(c.data.train), "data.train is empty"),
      (c.stage == "teacher" or bool(c.workdir), "workdir is empty"),
      (c.stage != "student" or bool(c.store.dir), "stage student needs store.dir"),
      (c.compare.mode in ("offline", "online"),
       f"compare.mode must be offline|online, got {c.compare.mode!r}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
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


def load_teacher(c, mesh=None):
  """The frozen teacher, its tokenizer and a fingerprint of its checkpoint directory."""
  from gemmax import data
  from gemmax.convert import load_hf
  from gemmax.distill import model_fingerprint
  teacher = load_hf(c.teacher.path, compute_dtype=c.teacher.dtype or None, mesh=mesh)
  tok = data.load_tokenizer(c.teacher.path)
  data.check_vocab(tok, teacher.config.vocab_size)
  return teacher, tok, model_fingerprint(c.teacher.path)


def build_student(c, teacher_config=None, mesh=None):
  """The student (HF dir, or a random preset taking the teacher's vocabulary and special ids),
  with LoRA/DoRA adapters for method lora/dora."""
  from flax import nnx
  from gemmax import peft, sharding
  from gemmax.convert import load_hf
  from gemmax.models import ModelConfig, Transformer
  s = c.student
  if s.path:
    model = load_hf(s.path, dtype=s.param_dtype or None, compute_dtype=s.dtype, mesh=mesh,
                    remat=s.remat)
  else:
    inherit = {}
    if teacher_config is not None:
      inherit = {k: getattr(teacher_config, k) for k in
                 ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")}
    try:
      cfg = ModelConfig.preset(s.preset, **{**inherit, **s.overrides.to_dict(), "dtype": s.dtype,
                                            "param_dtype": s.param_dtype or "float32",
                                            "remat": s.remat})
    except TypeError as e:
      raise ConfigError(f"student.overrides: {e}") from None
    model = (sharding.create_sharded(cfg, mesh, c.seed) if mesh is not None
             else Transformer(cfg, rngs=nnx.Rngs(c.seed)))
  if c.method != "full":
    targets = c.lora.targets
    if isinstance(targets, str) and "," in targets:
      targets = [t.strip() for t in targets.split(",") if t.strip()]
    peft.apply(model, method=c.method, rank=c.lora.rank, alpha=c.lora.alpha, targets=targets,
               dropout=c.lora.dropout, rslora=c.lora.rslora,
               rngs=nnx.Rngs(params=c.seed, dropout=c.seed + 1))
    if mesh is not None:
      sharding.shard_model(model, mesh)
  return model


def student_tokenizer(c, teacher_tok=None):
  from gemmax import data
  path = c.student.tokenizer or c.student.path
  return data.load_tokenizer(path) if path else teacher_tok


def check_same_tokenizer(student_tok, teacher_tok):
  if student_tok.fingerprint != teacher_tok.fingerprint:
    raise ConfigError(f"student tokenizer {student_tok.path} differs from the teacher's "
                      f"{teacher_tok.path} (sha256 {student_tok.fingerprint[:12]}... vs "
                      f"{teacher_tok.fingerprint[:12]}...): distillation needs one tokenizer")


def spec(c, path):
  from gemmax import data
  return data.SourceSpec(path, kind=c.data.format, template=c.data.template)


def eval_factory(c, tok, path):
  from gemmax import data
  if not path:
    return None
  cfg = data.DataConfig(seq_len=c.data.seq_len, batch_size=c.data.eval_batch_size, shuffle=False,
                        num_epochs=1, packing=c.data.packing, prefetch=0,
                        on_bad_rows=c.data.on_bad_rows)
  return lambda: data.make_pipeline(spec(c, path), tok, cfg)


def distill_loss(c, kd_ratio=None):
  from gemmax.distill import DistillLoss
  d = c.distill
  return DistillLoss(kd_ratio=d.kd_ratio if kd_ratio is None else kd_ratio,
                     temperature=d.temperature, divergence=d.divergence, beta=d.beta).validate()


def train(c, model, student, train_data, evaluate, loss, workdir, mesh=None, onpolicy=None):
  """The gemmax.train Trainer with the distillation loss; saves the student; returns summary."""
  from gemmax import peft
  from gemmax.convert import save_hf
  from gemmax.distill import distill_loss_fn, student_filter
  from gemmax.models import param_count
  from gemmax.train import OptimizerConfig, Trainer, TrainerConfig
  from gemmax.train.workdir import write_atomic
  o = c.optimizer
  opt = OptimizerConfig(learning_rate=o.learning_rate, warmup_steps=o.warmup_steps, steps=c.steps,
                        end_lr_fraction=o.end_lr_fraction, b1=o.b1, b2=o.b2,
                        weight_decay=o.weight_decay, clip_norm=o.clip_norm or None)
  loop = TrainerConfig(workdir=workdir, steps=c.steps, accum_steps=o.grad_accum,
                       log_every=c.log_every, eval_every=c.eval_every if evaluate else 0,
                       eval_batches=c.eval_batches, checkpoint_every=c.checkpoint_every,
                       keep_checkpoints=c.keep_checkpoints, seed=c.seed, progress=c.progress,
                       save_adapter=False)
  trainer = Trainer(model, opt, loop, train_data=train_data, eval_data=evaluate, mesh=mesh,
                    trainable=student_filter(model), loss_fn=distill_loss_fn(loss))
  if onpolicy is not None:
    onpolicy.bind(trainer)
  summary = trainer.run()
  summary.update(student_params=param_count(student.config), kd_ratio=loss.kd_ratio,
                 trainable_params=trainer.trainable_params, temperature=loss.temperature)
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


# --- stages -------------------------------------------------------------------------------------
def stage_teacher(c, mesh=None, loaded=None, train_path=None) -> dict:
  from gemmax.distill import write_teacher_store
  teacher, tok, fingerprint = loaded or load_teacher(c, mesh)
  t0 = time.perf_counter()
  manifest = write_teacher_store(
      teacher, tok, spec(c, train_path or c.data.train), _store_dir(c), k=c.store.k,
      temperature=c.distill.temperature, sampling=c.store.sampling, seed=c.seed,
      seq_len=c.data.seq_len, batch_size=c.store.batch_size, num_shards=c.store.num_shards,
      teacher_id=fingerprint, teacher_path=c.teacher.path, mesh=mesh, progress=c.progress,
      on_bad_rows=c.data.on_bad_rows)
  st = manifest.get("stats", {})
  print(f"teacher store {_store_dir(c)}: {st.get('examples', 0):,} examples, "
        f"{st.get('tokens', 0):,} tokens, k={c.store.k}, {st.get('bytes_per_token', 0):.1f} "
        f"bytes/token ({time.perf_counter() - t0:.0f} s)")
  return manifest


def open_store(c, tok, vocab_size, dataset_path=None):
  """The store, checked against the student's tokenizer, the dataset and the temperature."""
  from gemmax.distill import StoreError, TopKStore, dataset_fingerprint
  store = TopKStore(_store_dir(c))
  path = dataset_path or c.data.train
  store.check(tokenizer=tok, vocab_size=vocab_size,
              dataset=dataset_fingerprint(spec(c, path)) if path else None)
  if not math.isclose(store.temperature, c.distill.temperature):
    raise StoreError(f"{store.directory}: the store holds teacher probabilities at temperature "
                     f"{store.temperature}, but distill.temperature is {c.distill.temperature}; "
                     f"set it to {store.temperature} or rerun the teacher stage")
  return store


def store_batches(c, store):
  from gemmax import data
  from gemmax.distill import store_pipeline
  return store_pipeline(store, data.DataConfig(
      seq_len=c.data.seq_len, batch_size=c.data.batch_size, seed=c.seed, packing=c.data.packing,
      worker_count=c.data.workers))


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
  return train(c, model, student, store_batches(c, store), eval_factory(c, tok, c.data.validation),
               distill_loss(c), c.workdir, mesh)


def text_batches(c, tok, path):
  from gemmax import data
  return data.make_pipeline(spec(c, path), tok, data.DataConfig(
      seq_len=c.data.seq_len, batch_size=c.data.batch_size, seed=c.seed, packing=c.data.packing,
      worker_count=c.data.workers, on_bad_rows=c.data.on_bad_rows))


def stage_online(c, mesh=None) -> dict:
  from gemmax.distill import OnPolicyBatches, TeacherStudent
  teacher, teacher_tok, _ = load_teacher(c, mesh)
  tok = student_tokenizer(c, teacher_tok)
  check_same_tokenizer(tok, teacher_tok)
  student = build_student(c, teacher.config, mesh)
  batches = text_batches(c, tok, c.data.train)
  onpolicy = None
  if c.onpolicy.fraction > 0:
    o = c.onpolicy
    batches = onpolicy = OnPolicyBatches(
        batches, fraction=o.fraction, max_new_tokens=o.max_new_tokens, temperature=o.temperature,
        top_k=o.top_k or None, min_prompt=o.min_prompt, seed=c.seed, tokenizer=tok)
  return train(c, TeacherStudent(student, teacher), student, batches,
               eval_factory(c, tok, c.data.validation), distill_loss(c), c.workdir, mesh, onpolicy)


def prepare_corpus(c) -> tuple[str, str]:
  """workdir/data/{train,heldout}.jsonl: the pretraining split of compare.corpus (held-out =
  every holdout_every-th chunk), evenly thinned to train_chunks / heldout_chunks records."""
  from gemmax.data.chunking import corpus_split
  p = c.compare
  if not os.path.isfile(p.corpus):
    raise FileNotFoundError(f"{p.corpus} does not exist (run python experiments/prepare_data.py)")
  train_chunks, held = corpus_split(p.corpus, p.chunk_chars, p.holdout_every)
  thin = lambda xs, n: xs[::max(1, len(xs) // n)][:n] if n else xs
  out = os.path.join(c.workdir, "data")
  os.makedirs(out, exist_ok=True)
  paths = os.path.join(out, "train.jsonl"), os.path.join(out, "heldout.jsonl")
  chosen = thin(train_chunks, p.train_chunks), thin(held, p.heldout_chunks)
  for path, chunks in zip(paths, chosen):
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps({"text": ch}) + "\n" for ch in chunks)
  return paths


def stage_compare(c, mesh=None) -> dict:
  """The demo: distilled vs CE-only student from one init, same data and steps (module doc)."""
  from gemmax.distill import TeacherStudent, report
  from gemmax.train import read_jsonl
  from gemmax.train.workdir import write_atomic
  t_start = time.perf_counter()
  train_path, heldout_path = prepare_corpus(c)
  teacher, tok, fingerprint = loaded = load_teacher(c, mesh)
  check_same_tokenizer(student_tokenizer(c, tok), tok)
  manifest = {}
  if c.compare.mode == "offline":  # both students read the store (the CE run ignores its top-k)
    manifest = stage_teacher(c, mesh, loaded, train_path)
    store = open_store(c, tok, teacher.config.vocab_size, dataset_path=train_path)
    batches = lambda: store_batches(c, store)
  else:  # the teacher scores each batch in the loop; both students see the same batches
    batches = lambda: text_batches(c, tok, train_path)
  t_teacher = time.perf_counter() - t_start
  evaluate = eval_factory(c, tok, heldout_path)
  init = report.heldout_metrics(TeacherStudent(build_student(c, teacher.config, mesh), teacher),
                                evaluate(), temperature=c.distill.temperature, mesh=mesh)
  runs, histories = {}, {}
  for name, ratio in (("distilled", c.distill.kd_ratio), ("ce_only", 0.0)):
    student = build_student(c, teacher.config, mesh)  # the same seed: the same init both times
    workdir = os.path.join(c.workdir, name)
    runs[name] = train(c, TeacherStudent(student, teacher), student, batches(), evaluate,
                       distill_loss(c, ratio), workdir, mesh)
    histories[name] = [{"step": 0, "eval_kl": init["kl"], "eval_ce": init["ce"]}] + read_jsonl(
        os.path.join(workdir, "metrics.jsonl"))
  t_eval = time.perf_counter()
  final = {}
  for name in runs:
    last = [h for h in histories[name] if "eval_kl" in h][-1]
    final[name] = {"kl": last["eval_kl"], "ce": last["eval_ce"],
                   "perplexity": math.exp(last["eval_ce"]), "tokens": int(last["eval_tokens"])}
  ref = report.heldout_metrics(TeacherStudent(teacher, teacher), evaluate(),
                               temperature=c.distill.temperature, mesh=mesh)
  kl_d, kl_c = final["distilled"]["kl"], final["ce_only"]["kl"]
  how = (f"top-{c.store.k} store" if c.compare.mode == "offline" else
         f"online {c.distill.divergence}")
  plot = report.plot_comparison(
      {f"distilled ({how}, kd_ratio {c.distill.kd_ratio:g})": histories["distilled"],
       "CE only": histories["ce_only"]}, os.path.join(c.workdir, "compare.png"),
      teacher_perplexity=ref["perplexity"],
      title=f"{c.teacher.path} -> {runs['distilled']['student_params'] / 1e6:.2f}M-param student, "
            f"{c.steps} steps each")
  summary = {
      "teacher": c.teacher.path, "teacher_heldout": ref, "student_init_heldout": init,
      "steps": c.steps,
      "student_params": runs["distilled"]["student_params"], "mode": c.compare.mode,
      "divergence": c.distill.divergence if c.compare.mode == "online" else None,
      "k": c.store.k if c.compare.mode == "offline" else None,
      "kd_ratio": c.distill.kd_ratio, "temperature": c.distill.temperature,
      "heldout": {"file": heldout_path, **final},
      "kl_reduction": 1.0 - kl_d / kl_c,
      "perplexity_ratio": final["distilled"]["perplexity"] / final["ce_only"]["perplexity"],
      "store": manifest.get("stats"), "plot": plot,
      "seconds": {"teacher_stage": t_teacher,
                  "distilled": runs["distilled"]["wall_seconds"],
                  "ce_only": runs["ce_only"]["wall_seconds"],
                  "teacher_eval": time.perf_counter() - t_eval,
                  "total": time.perf_counter() - t_start},
      "runs": {name: {k: r.get(k) for k in ("final_loss", "final_eval_loss", "tokens_per_sec",
                                             "wall_seconds")} for name, r in runs.items()},
  }
  write_atomic(os.path.join(c.workdir, "summary.json"), json.dumps(summary, indent=2))
  print(f"held-out ({final['distilled']['tokens']:,} tokens), after {c.steps} steps each:\n"
        f"  KL(teacher || student): CE only {kl_c:.4f} -> distilled {kl_d:.4f} nats/token "
        f"({100 * summary['kl_reduction']:.1f}% lower)\n"
        f"  perplexity: CE only {final['ce_only']['perplexity']:.2f}, distilled "
        f"{final['distilled']['perplexity']:.2f}, teacher {ref['perplexity']:.2f}\n"
        f"  {summary['seconds']['total']:.0f} s in all; {plot}, "
        f"{os.path.join(c.workdir, 'summary.json')}")
  return summary


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  run(_CONFIG.value)


def run(c) -> dict:
  """Checks the config, claims the workdir (training stages) and runs the stage."""
  check_config(c)
  if c.stage == "teacher":
    return stage_teacher(c, build_mesh(c))
  from gemmax.train.workdir import claim_workdir
  claim_workdir(c.workdir, json.loads(c.to_json_best_effort()), RESUME_MAY_DIFFER)
  mesh = build_mesh(c)
  if c.stage == "compare":
    return stage_compare(c, mesh)
  summary = (stage_student if c.stage == "student" else stage_online)(c, mesh)
  print(f"done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
        f"{summary['final_loss']:.4f}, {summary['tokens_per_sec'] or 0:,.0f} tokens/s; "
        f"outputs in {c.workdir}")
  return summary


if __name__ == "__main__":
  from ml_collections import config_flags
  # Defined here, not at import, so tests can import this module next to other scripts'.
  _CONFIG = config_flags.DEFINE_config_file("config", None,
                                            "Path to an ml_collections config file.")
  flags.mark_flags_as_required(["config"])
  cli.run(main)
