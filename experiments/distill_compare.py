"""The compare stage of experiments/distill.py, the distillation demo: one student init trained twice
on the same batches -- distilled and CE only -- and both scored on held-out text (KL to the
teacher, perplexity); writes compare.png and summary.json."""

from __future__ import annotations

import json
import math
import os
import time

import build
import distill_setup as setup


def prepare_corpus(c) -> tuple[str, str]:
  """workdir/data/{train,heldout}.jsonl: the pretraining split of compare.corpus (held-out =
  every holdout_every-th chunk), evenly thinned to train_chunks / heldout_chunks records."""
  from gemmax.data import corpus
  from gemmax.data.chunking import corpus_split

  p = c.compare
  if p.corpus not in corpus.CORPORA and not os.path.isfile(p.corpus):
    raise FileNotFoundError(f"{p.corpus} does not exist")
  train_chunks, held = corpus_split(corpus.resolve(p.corpus), p.chunk_chars, p.holdout_every)
  thin = lambda xs, n: xs[:: max(1, len(xs) // n)][:n] if n else xs
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
  teacher, tok, fingerprint = loaded = setup.load_teacher(c, mesh)
  setup.check_same_tokenizer(setup.student_tokenizer(c, tok), tok)
  manifest = {}
  if c.compare.mode == "offline":  # both students read the store (the CE run ignores its top-k)
    manifest = setup.stage_teacher(c, mesh, loaded, train_path)
    store = setup.open_store(c, tok, teacher.config.vocab_size, dataset_path=train_path)
    batches = lambda: setup.store_batches(c, store)
  else:  # the teacher scores each batch in the loop; both students see the same batches
    batches = lambda: build.batches(c.data, tok, train_path, c.seed)
  t_teacher = time.perf_counter() - t_start
  evaluate = build.eval_batches(c.data, tok, heldout_path)
  init = report.heldout_metrics(
    TeacherStudent(setup.build_student(c, teacher.config, mesh), teacher),
    evaluate(),
    temperature=c.distill.temperature,
    mesh=mesh,
  )
  runs, histories = {}, {}
  for name, ratio in (("distilled", c.distill.kd_ratio), ("ce_only", 0.0)):
    student = setup.build_student(
      c, teacher.config, mesh
    )  # the same seed: the same init both times
    workdir = os.path.join(c.workdir, name)
    runs[name] = setup.train(
      c,
      TeacherStudent(student, teacher),
      student,
      batches(),
      evaluate,
      setup.distill_loss(c, ratio),
      workdir,
      mesh,
    )
    histories[name] = [{"step": 0, "eval_kl": init["kl"], "eval_ce": init["ce"]}] + read_jsonl(
      os.path.join(workdir, "metrics.jsonl")
    )
  t_eval = time.perf_counter()
  final = {}
  for name in runs:
    last = [h for h in histories[name] if "eval_kl" in h][-1]
    final[name] = {
      "kl": last["eval_kl"],
      "ce": last["eval_ce"],
      "perplexity": math.exp(last["eval_ce"]),
      "tokens": int(last["eval_tokens"]),
    }
  ref = report.heldout_metrics(
    TeacherStudent(teacher, teacher), evaluate(), temperature=c.distill.temperature, mesh=mesh
  )
  kl_d, kl_c = final["distilled"]["kl"], final["ce_only"]["kl"]
  how = (
    f"top-{c.store.k} store" if c.compare.mode == "offline" else f"online {c.distill.divergence}"
  )
  plot = report.plot_comparison(
    {
      f"distilled ({how}, kd_ratio {c.distill.kd_ratio:g})": histories["distilled"],
      "CE only": histories["ce_only"],
    },
    os.path.join(c.workdir, "compare.png"),
    teacher_perplexity=ref["perplexity"],
    title=f"{c.teacher.path} -> {runs['distilled']['student_params'] / 1e6:.2f}M-param student, "
    f"{c.steps} steps each",
  )
  summary = {
    "teacher": c.teacher.path,
    "teacher_heldout": ref,
    "student_init_heldout": init,
    "steps": c.steps,
    "student_params": runs["distilled"]["student_params"],
    "mode": c.compare.mode,
    "divergence": c.distill.divergence if c.compare.mode == "online" else None,
    "k": c.store.k if c.compare.mode == "offline" else None,
    "kd_ratio": c.distill.kd_ratio,
    "temperature": c.distill.temperature,
    "heldout": {"file": heldout_path, **final},
    "kl_reduction": 1.0 - kl_d / kl_c,
    "perplexity_ratio": final["distilled"]["perplexity"] / final["ce_only"]["perplexity"],
    "store": manifest.get("stats"),
    "plot": plot,
    "seconds": {
      "teacher_stage": t_teacher,
      "distilled": runs["distilled"]["wall_seconds"],
      "ce_only": runs["ce_only"]["wall_seconds"],
      "teacher_eval": time.perf_counter() - t_eval,
      "total": time.perf_counter() - t_start,
    },
    "runs": {
      name: {
        k: r.get(k) for k in ("final_loss", "final_eval_loss", "tokens_per_sec", "wall_seconds")
      }
      for name, r in runs.items()
    },
  }
  write_atomic(os.path.join(c.workdir, "summary.json"), json.dumps(summary, indent=2))
  print(
    f"held-out ({final['distilled']['tokens']:,} tokens), after {c.steps} steps each:\n"
    f"  KL(teacher || student): CE only {kl_c:.4f} -> distilled {kl_d:.4f} nats/token "
    f"({100 * summary['kl_reduction']:.1f}% lower)\n"
    f"  perplexity: CE only {final['ce_only']['perplexity']:.2f}, distilled "
    f"{final['distilled']['perplexity']:.2f}, teacher {ref['perplexity']:.2f}\n"
    f"  {summary['seconds']['total']:.0f} s in all; {plot}, "
    f"{os.path.join(c.workdir, 'summary.json')}"
  )
  return summary
