"""Evaluates a model (HF dir, optionally with a fine-tuned adapter) and writes a JSON report.

    python experiments/evaluate.py --config experiments/configs/evaluate.py [--config.x=...]

Writes <workdir>/eval_report.json (and confusion_matrix.png for classification).
"""
import json
import os
import time

from ml_collections import config_flags

from gemmax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "evaluation config file")
TASKS = ("classification", "perplexity", "exact_match")


def run_classification(c, model, tok):
  from gemmax import evals
  from gemmax.evals.loading import read_labeled
  cc = c.classification
  pairs = read_labeled(cc.file, cc.format, cc.limit)
  shots = []
  if cc.few_shot:
    shot_file = cc.few_shot_file or os.path.join(os.path.dirname(cc.file), "train.jsonl")
    shots = read_labeled(shot_file, cc.format, cc.few_shot)
  template = "{text}" if cc.format == "alpaca" else cc.template
  classes = [x.strip() for x in cc.classes.split(",") if x.strip()] or None
  m = evals.evaluate_classification(
      model, tok, [p for p, _ in pairs], [l for _, l in pairs], classes, template=template,
      label_template=cc.label_template, few_shot=shots, reduction=cc.reduction,
      batch_size=c.batch_size, progress=c.progress)
  print(evals.format_report(m))
  m["confusion_png"] = evals.save_confusion_png(m, os.path.join(c.workdir, "confusion_matrix.png"))
  m.update(file=cc.file, few_shot=len(shots))
  return m


def run_perplexity(c, model, tok):
  from gemmax import evals
  p = c.perplexity
  with open(p.file, encoding="utf-8") as f:
    text = f.read()
  if p.max_chars:
    text = text[:p.max_chars]
  r = evals.perplexity(model, tok, text, window=p.window, stride=p.stride,
                       batch_size=c.batch_size, progress=c.progress)
  print(f"perplexity {r['perplexity']:.3f}  ({r['nats_per_token']:.4f} nats/token, "
        f"{r['bits_per_token']:.4f} bits/token, {r['tokens']} tokens)")
  return {"file": p.file, **r}


def run_exact_match(c, model, tok):
  from gemmax import evals
  from gemmax.evals.loading import read_labeled
  e = c.exact_match
  pairs = read_labeled(e.file, "alpaca", e.limit)
  r = evals.exact_match(model, tok, [p for p, _ in pairs], [l for _, l in pairs],
                        max_new_tokens=e.max_new_tokens, batch_size=c.batch_size,
                        progress=c.progress)
  print(f"exact match {r['exact_match']:.4f} on {r['num_examples']} prompts")
  return {"file": e.file, **r}


def evaluate(c):
  from gemmax.evals.loading import load_model, load_tokenizer_for
  tasks = [t.strip() for t in c.tasks.split(",") if t.strip()]
  bad = [t for t in tasks if t not in TASKS]
  if bad or not tasks:
    raise ValueError(f"tasks {bad or tasks} not in {TASKS}")
  os.makedirs(c.workdir, exist_ok=True)
  model, base = load_model(c.model.path, c.model.adapter, c.model.dtype, c.model.quantize)
  tok = load_tokenizer_for(base, c.model.tokenizer)
  report = {"model": base, "adapter": c.model.adapter, "tasks": {}}
  for t in tasks:
    start = time.time()
    report["tasks"][t] = globals()[f"run_{t}"](c, model, tok)
    report["tasks"][t]["seconds"] = round(time.time() - start, 2)
  path = os.path.join(c.workdir, "eval_report.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"report written to {path}")
  return report


def main(argv):
  del argv
  evaluate(_CONFIG.value)


if __name__ == "__main__":
  cli.run(main)
