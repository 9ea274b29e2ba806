"""Fine-tune a Gemma 2 / Llama model: full, LoRA, DoRA, QLoRA or QDoRA.

    python experiments/finetune.py --config experiments/configs/demo.py [--config.steps=50 ...]

The config (every key, its type and range: FINETUNE in experiments/schemas.py) reads as a
recipe: model, data, method, optimizer, loop. `model.path` is an HF directory, a .gguf file or a
registry name (`smollm2-135m-instruct`: fetched once, pinned by sha256). Writes to `workdir`:
checkpoints/, metrics.jsonl, tensorboard/, loss_curve.png, summary.json, adapter/ (HF PEFT
format), optionally merged/ (HF format) and model-<type>.gguf (`export.gguf`), and for
`classify.file` the classification report and confusion_matrix.png.

Running the same command again resumes from the last complete checkpoint; a workdir holding a run
with a different config is refused (gemmax/train/workdir.py). Exit statuses (gemmax/cli.py): 0 done,
2 a bad input (one line on stderr; --debug for the traceback), 75 preempted by SIGTERM/SIGINT after
writing a checkpoint (run the command again to resume). docs/reliability.md lists the checks.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from gemmax import cli, schema
from gemmax.errors import ConfigError

import build
from schemas import FINETUNE

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")

RESUME_MAY_DIFFER = schema.may_differ(FINETUNE)  # keys that do not change the trained weights


def check_config(c) -> None:
  """Raises ConfigError naming the first unknown key or invalid value: the schema's types and
  ranges (experiments/schemas.py), then what relates several keys and the files named."""
  schema.check(c, FINETUNE)
  checks = [
    (not (c.quantize and c.method == "full"), "quantize='nf4' needs method lora or dora"),
    (
      c.data.batch_size % c.optimizer.grad_accum == 0,
      f"data.batch_size {c.data.batch_size} must be a positive multiple of optimizer.grad_accum "
      f"{c.optimizer.grad_accum}",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
  build.check_sources(
    c,
    (
      ("data.train", c.data.train),
      ("data.validation", c.data.validation),
      ("classify.file", c.classify.file),
    ),
  )


def build_model(c, mesh=None):
  """The base model (HF dir, .gguf file, registry name or random preset), with adapters applied
  for lora/dora; created straight into its shards when `mesh` is given."""
  model = build.model(c.model, c.seed, mesh)
  build.check_context(c.data.seq_len, model, source=c.model.path or c.model.preset)
  return build.adapters(model, c, mesh)


_KEEP = ("accuracy", "macro_f1", "num_examples", "classes", "per_class", "confusion_matrix")


def classify(c, model, tok, rows, classes, stage: str) -> dict:
  """Label-likelihood accuracy of `model` on the classify.file rows, prompted as training
  prompts (data.template), and after fine-tuning also the generated answers' exact match."""
  from gemmax import evals
  from gemmax.evals import answers

  generate = 8 if c.classify.generate else 0  # both stages: one compiled pass serves both
  m = answers.classify_rows(
    model,
    tok,
    rows,
    classes,
    template=c.data.template,
    reduction=c.classify.reduction,
    answer_tokens=generate,
    batch_size=max(c.data.eval_batch_size, 16),
    progress=c.progress,
  )
  out = {k: m[k] for k in _KEEP}
  print(f"{stage} (label likelihood, {c.classify.reduction}):\n{evals.format_report(m)}")
  if stage == "fine_tuned":
    out["confusion_png"] = evals.save_confusion_png(
      m, os.path.join(c.workdir, "confusion_matrix.png")
    )
  if generate:
    g = m["generated"]
    out["generated"] = {
      **{k: g[k] for k in _KEEP},
      "exact_match": g["exact_match"],
      "not_a_class": g["not_a_class"],
    }
    print(
      f"{stage.replace('_', '-')}, answering by greedy generation: exact match "
      f"{g['exact_match']:.2%} "
      f"({g['not_a_class']} answers that are no class)"
    )
  return out


def classification_rows(c):
  """(rows of classify.file, classes, majority baseline): the classes are the training file's
  labels, and a test label never seen in training is an error, not a silent 0%."""
  import collections
  from gemmax.evals.loading import read_records

  rows = read_records(c.classify.file, c.classify.limit)
  counts = collections.Counter(r["output"] for r in read_records(c.data.train))
  unseen = sorted({r["output"] for r in rows} - set(counts))
  if unseen:
    raise ConfigError(
      f"classify.file {c.classify.file}: labels {unseen} never occur in data.train {c.data.train}"
    )
  label = counts.most_common(1)[0][0]
  baseline = {"label": label, "accuracy": sum(r["output"] == label for r in rows) / len(rows)}
  return rows, sorted(counts), baseline


def run(c) -> dict:
  """Builds and checks everything, claims the workdir, trains. Bad inputs raise GemmaxError (or
  ValueError / OSError) before anything in the workdir is written."""
  from gemmax.train import Trainer
  from gemmax.train.workdir import check_workdir, claim_workdir, write_atomic

  run_config = json.loads(c.to_json_best_effort())
  check_workdir(c.workdir, run_config, RESUME_MAY_DIFFER)  # fail before minutes of loading
  if c.multihost:
    from gemmax import distributed

    distributed.initialize()
  mesh = build.mesh(c.mesh)
  model = build_model(c, mesh)
  tok = build.tokenizer(c.model.tokenizer or c.model.path, model.config.vocab_size)
  train = build.batches(c.data, tok, c.data.train, c.seed)
  evaluate = build.eval_batches(c.data, tok, c.data.validation)
  rows, classes, baseline = classification_rows(c) if c.classify.file else ([], [], None)
  opt = build.optimizer(c)
  loop = build.loop(c, evaluate is not None, save_adapter=c.method != "full")
  claim_workdir(c.workdir, run_config, RESUME_MAY_DIFFER)
  scores = {}
  if rows:
    scores["zero_shot"] = classify(c, model, tok, rows, classes, "zero_shot")
    print(
      f"zero-shot accuracy {scores['zero_shot']['accuracy']:.2%} on {c.classify.file} "
      f"({len(rows)} rows; majority-class baseline {baseline['accuracy']:.2%})"
    )
  trainer = Trainer(model, opt, loop, train_data=train, eval_data=evaluate, mesh=mesh)
  summary = trainer.run()
  if c.export.gguf:
    from gemmax.convert import save_gguf

    summary["gguf"] = save_gguf(
      model,
      os.path.join(c.workdir, f"model-{c.export.gguf}.gguf"),
      tokenizer=tok,
      dtype=c.export.gguf,
    )
    print(f"exported {summary['gguf']} (adapters merged; loads in llama.cpp, Ollama, transformers)")
  if rows:
    scores["fine_tuned"] = classify(c, model, tok, rows, classes, "fine_tuned")
    summary["classification"] = dict(file=c.classify.file, baseline=baseline, **scores)
    z, t, b = (
      scores["zero_shot"]["accuracy"],
      scores["fine_tuned"]["accuracy"],
      baseline["accuracy"],
    )
    f1 = scores["fine_tuned"]["macro_f1"]
    gen = scores["fine_tuned"].get("generated")
    print(
      f"{c.classify.file}: majority baseline {b:.2%} | zero-shot {z:.2%} | "
      f"fine-tuned {t:.2%}, macro-F1 {f1:.3f} ({100 * (t - b):+.1f} points over the baseline)"
      + (f" | by generation {gen['exact_match']:.2%}" if gen else "")
    )
  if rows or c.export.gguf:
    write_atomic(os.path.join(c.workdir, "summary.json"), json.dumps(summary, indent=2))
  print(
    f"done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
    f"{summary['final_loss']:.4f}, {summary['tokens_per_sec'] or 0:,.0f} tokens/s; "
    f"outputs in {c.workdir}"
  )
  return summary


def main(argv):
  logging.set_verbosity(logging.WARNING)  # keep orbax's INFO lines out of the progress bar
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  c = _CONFIG.value
  check_config(c)
  run(c)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
