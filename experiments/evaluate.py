"""Evaluates a model and writes a JSON report.

    python experiments/evaluate.py --config experiments/configs/evaluate.py [--config.x=...]
    python experiments/evaluate.py --config experiments/configs/evaluate.py --config.model.path=runs/demo

The model is a registry name, an HF dir, a .gguf file or a finetune workdir (its base and its
adapter; Alpaca rows are then prompted the way that run trained). Writes
<workdir>/eval_report.json (and confusion_matrix.png for classification).
"""

import json
import os
import time

from absl import logging
from ml_collections import config_flags

from gemmax import cli, schema
from gemmax.errors import GemmaxError

import build
from schemas import EVALUATE, check_model_source

_CONFIG = config_flags.DEFINE_config_file("config", None, "evaluation config file")
TASKS = tuple(k for k, v in EVALUATE.items() if isinstance(v, dict) and "file" in v)  # run_<task>


def prompt_template(c, run_cfg):
  """How Alpaca rows are put to the model: classification.prompt, else as the run trained."""
  return c.classification.prompt or run_cfg.get("data", {}).get("template") or None


def run_classification(c, model, tok, run_cfg, out):
  from gemmax import evals
  from gemmax.evals import answers
  from gemmax.evals.loading import read_labeled, read_records

  cc = c.classification
  classes = [x.strip() for x in cc.classes.split(",") if x.strip()] or None
  template = prompt_template(c, run_cfg)
  shots = []
  if cc.format == "alpaca" and not cc.few_shot:
    m = answers.classify_rows(
      model,
      tok,
      read_records(cc.file, cc.limit),
      classes,
      template=template,
      reduction=cc.reduction,
      batch_size=c.batch_size,
      progress=c.progress,
    )
  else:
    if cc.format == "alpaca" and template not in (None, "alpaca"):
      raise GemmaxError(f"classification.few_shot needs the Alpaca prompt, not {template!r}")
    pairs = read_labeled(cc.file, cc.format, cc.limit)
    if cc.few_shot:
      shot_file = cc.few_shot_file or os.path.join(os.path.dirname(cc.file), "train.jsonl")
      shots = read_labeled(shot_file, cc.format, cc.few_shot)
    m = evals.evaluate_classification(
      model,
      tok,
      [p for p, _ in pairs],
      [l for _, l in pairs],
      classes,
      template="{text}" if cc.format == "alpaca" else cc.template,
      label_template=cc.label_template,
      few_shot=shots,
      reduction=cc.reduction,
      batch_size=c.batch_size,
      progress=c.progress,
    )
  print(evals.format_report(m))
  m["confusion_png"] = evals.save_confusion_png(m, os.path.join(out, "confusion_matrix.png"))
  m.update(file=cc.file, few_shot=len(shots))
  return m


def run_perplexity(c, model, tok, run_cfg, out):
  from gemmax import evals

  p = c.perplexity
  try:
    with open(p.file, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise GemmaxError(f"perplexity.file {p.file}: not UTF-8 text (byte {e.start})") from None
  if p.max_chars:
    text = text[: p.max_chars]
  r = evals.perplexity(
    model, tok, text, window=p.window, stride=p.stride, batch_size=c.batch_size, progress=c.progress
  )
  print(
    f"perplexity {r['perplexity']:.3f}  ({r['nats_per_token']:.4f} nats/token, "
    f"{r['bits_per_token']:.4f} bits/token, {r['tokens']} tokens)"
  )
  return {"file": p.file, **r}


def run_exact_match(c, model, tok, run_cfg, out):
  from gemmax.evals import answers
  from gemmax.evals.loading import read_records

  e = c.exact_match
  rows = read_records(e.file, e.limit)
  r = answers.generate_rows(
    model,
    tok,
    rows,
    template=prompt_template(c, run_cfg),
    max_new_tokens=e.max_new_tokens,
    batch_size=c.batch_size,
    progress=c.progress,
  )
  print(f"exact match {r['exact_match']:.4f} on {r['num_examples']} prompts")
  return {
    "file": e.file,
    "exact_match": r["exact_match"],
    "num_examples": r["num_examples"],
    "predictions": r["answers"],
  }


def task_files(c, tasks) -> dict:
  """{config key: file} that the tasks read (a few-shot file only where one is named)."""
  out = {f"{t}.file": c[t].file for t in tasks}
  if "classification" in tasks and c.classification.few_shot and c.classification.few_shot_file:
    out["classification.few_shot_file"] = c.classification.few_shot_file
  return out


def check_inputs(c, tasks) -> None:
  """Every file a task reads exists and opens, and the classification templates name only their
  fields, before the model loads or anything is written."""
  if "classification" in tasks:
    from gemmax.evals.classification import check_template

    if c.classification.format == "text_label":
      check_template(c.classification.template, "text", "classification.template")
    check_template(c.classification.label_template, "label", "classification.label_template")
  for key, path in task_files(c, tasks).items():
    if not path or not os.path.isfile(path):
      raise GemmaxError(f"{key}: {path!r} is not a file")
    try:
      with open(path, "rb"):
        pass
    except OSError as e:
      raise GemmaxError(f"{key}: {path}: {e.strerror}") from None


def evaluate(c):
  import shutil
  import tempfile

  schema.check(c, EVALUATE)
  check_model_source(c)
  tasks = [t.strip() for t in c.tasks.split(",") if t.strip()]
  bad = [t for t in tasks if t not in TASKS]
  if bad or not tasks:
    raise GemmaxError(f"tasks {bad or tasks} not in {TASKS}")
  if os.path.exists(c.workdir) and not os.path.isdir(c.workdir):
    raise GemmaxError(f"workdir {c.workdir}: exists and is not a directory")
  check_inputs(c, tasks)
  model, base, run_cfg = build.trained_model(c.model)
  tok = build.tokenizer(c.model.tokenizer or base)
  report = {"model": base, "adapter": c.model.adapter, "tasks": {}}
  # Outputs go to a staging directory and move into the workdir only once every task is done:
  # an evaluation that fails midway leaves an earlier run's report and plots as they were.
  workdir, staging = c.workdir, tempfile.mkdtemp(prefix="gemmax-eval-")
  try:
    for t in tasks:
      start = time.time()
      report["tasks"][t] = globals()[f"run_{t}"](c, model, tok, run_cfg, staging)
      report["tasks"][t]["seconds"] = round(time.time() - start, 2)
    png = report["tasks"].get("classification", {}).get("confusion_png")
    if png:
      report["tasks"]["classification"]["confusion_png"] = os.path.join(
        workdir, os.path.basename(png)
      )
    with open(os.path.join(staging, "eval_report.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
    os.makedirs(workdir, exist_ok=True)
    for name in sorted(os.listdir(staging), key=lambda n: n == "eval_report.json"):  # report last
      shutil.move(os.path.join(staging, name), os.path.join(workdir, name))
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  print(f"report written to {os.path.join(workdir, 'eval_report.json')}")
  return report


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # keep INFO lines out of the progress bars
  evaluate(_CONFIG.value)


if __name__ == "__main__":
  cli.run(main)
