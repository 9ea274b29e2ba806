"""Data pipeline throughput against the demo train step's consumption, and against bare SentencePiece.

    python benchmarks/data_pipeline.py [--rounds 3] [--steps 8] [--batches 150] [--workers 0 2] [--corpus]

Demo check (always; issue 5: the pipeline must outrun the demo train step >= 10x so data never starves
training). Both sides in one run on one machine, rounds interleaved so background load hits both alike,
medians reported, load average recorded:
  - pipeline: data/trec6/train.jsonl as Alpaca records, the bundled tokenizer
    (checkpoints/gemmax-tiny/tokenizer.model), DataConfig as experiments/finetune.py builds it for the demo:
    batch [8, 256], packing on; tokenize + pack + batch with 0 and 2 grain worker processes.
  - train step: the demo's jitted LoRA step (rank 8, alpha 16, all linear layers, AdamW, clip 1.0) on a
    random-weight model of the bundled model's config (Gemma 2 arch, vocab 8192, hidden 256, MLP 768,
    4 layers, 4 heads / 2 kv, head_dim 64, window 128, float32): speed does not depend on the weights, so the
    benchmark never needs the checkpoint. It is fed real pipeline batches, cached (pure step time), and once
    more straight from a live pipeline (what the demo loop does; shows whether data stalls the step).
Tokens are non-padding batch slots (segment_ids > 0) on both sides. Last line, machine-readable:
`pipeline_vs_train_step=<ratio>`, pipeline tokens/s with workers=0 (the demo's setting) over train-step
tokens/s.

With --corpus, also the earlier peer table: Python stdlib docstrings (no downloads) as Alpaca records and
as plain text, batch [8, 1024], against `SentencePieceProcessor.encode` over the same strings
(tokenization only: no templates, masks, packing or batching), i.e. the ceiling for a single process.
With --train-tokenizer a SentencePiece BPE (vocab 8192, split_digits, byte_fallback) is trained on that
corpus first and used instead of --tokenizer.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time


def corpus_docs(n_chars: int) -> list[str]:
  docs, total = [], 0
  for name in sorted(sys.stdlib_module_names):
    if name.startswith("_") or name in ("antigravity", "this", "idlelib", "tkinter", "turtle"):
      continue
    try:
      mod = importlib.import_module(name)
    except Exception:
      continue
    for obj in [mod] + [getattr(mod, a, None) for a in sorted(dir(mod))[:300]]:
      doc = getattr(obj, "__doc__", None)
      if isinstance(doc, str) and len(doc) > 80 and "\n" in doc.strip():
        docs.append(doc.strip())
        total += len(doc)
    if total > n_chars:
      break
  return docs


def write_data(docs, d):
  with open(os.path.join(d, "alpaca.jsonl"), "w") as f:
    for doc in docs:
      first, rest = doc.split("\n", 1)
      f.write(
        json.dumps({"instruction": first, "input": "", "output": rest.strip() or first}) + "\n"
      )
  with open(os.path.join(d, "text.jsonl"), "w") as f:
    f.writelines(json.dumps({"text": doc}) + "\n" for doc in docs)


def train_tokenizer(docs, d) -> str:
  import sentencepiece as spm

  with open(os.path.join(d, "corpus.txt"), "w") as f:
    f.write("\n".join(docs))
  spm.SentencePieceTrainer.train(
    input=os.path.join(d, "corpus.txt"),
    model_prefix=os.path.join(d, "tokenizer"),
    vocab_size=8192,
    model_type="bpe",
    split_digits=True,
    byte_fallback=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    pad_id=0,
    eos_id=1,
    bos_id=2,
    unk_id=3,
    pad_piece="<pad>",
    eos_piece="<eos>",
    bos_piece="<bos>",
    user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
    minloglevel=2,
    num_threads=2,
    max_sentence_length=1 << 16,
  )
  return os.path.join(d, "tokenizer.model")


def time_pipeline(spec, tok, cfg, batches: int):
  from gemmax.data import make_pipeline

  it = make_pipeline(spec, tok, cfg)
  next(it)  # start-up (worker spawn, first fill) is not throughput
  t0, tokens, slots = time.perf_counter(), 0, 0
  for _ in range(batches):
    b = next(it)
    tokens += int((b["segment_ids"] > 0).sum())
    slots += b["segment_ids"].size
  dt = time.perf_counter() - t0
  it.close()
  return tokens / dt, tokens / slots


def time_spm(path, texts, repeats=3):
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=path)
  t0, n = time.perf_counter(), 0
  for _ in range(repeats):
    n += sum(map(len, sp.encode(texts)))
  return n / (time.perf_counter() - t0)


# --- the demo train step ------------------------------------------------------------------------
def demo_model_config():
  """The bundled model's config (checkpoints/gemmax-tiny), float32 as in experiments/configs/demo.py."""
  from gemmax.models import ModelConfig

  return ModelConfig.preset(
    "gemma2-2b",
    vocab_size=8192,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    sliding_window=128,
    query_pre_attn_scalar=64,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    dtype="float32",
  )


def demo_train_step():
  """(step(batch) -> metrics, trainable param count): the demo's LoRA step on a random-weight model."""
  import jax
  from flax import nnx

  from gemmax import peft
  from gemmax.models import Transformer
  from gemmax.train import OptimizerConfig, make_optimizer, make_train_step, split_model

  model = Transformer(demo_model_config(), rngs=nnx.Rngs(0))
  peft.apply(model, method="lora", rank=8, alpha=16, targets="all-linear", dropout=0.0)
  sm = split_model(model)
  tx = make_optimizer(
    OptimizerConfig(learning_rate=1e-3, warmup_steps=10, steps=200, clip_norm=1.0)
  )
  train_step = make_train_step(sm.train_def, tx)
  state = {"params": sm.params, "opt": tx.init(sm.params), "rng": jax.random.key(0)}

  def step(batch):
    state["rng"], rng = jax.random.split(state["rng"])
    state["params"], state["opt"], m = train_step(
      state["params"], state["opt"], sm.rest, batch, rng
    )
    return m

  return step, sum(x.size for x in jax.tree.leaves(sm.params))


def demo_data_config(workers: int):
  from gemmax.data import DataConfig

  # as experiments/finetune.py builds it from experiments/configs/demo.py (other fields: defaults)
  return DataConfig(seq_len=256, batch_size=8, seed=0, packing=True, worker_count=workers)


def time_steps(step, batches, n: int):
  """tokens/s of n train steps over cached batches (cycled); compile happens before the clock starts."""
  import jax

  jax.block_until_ready(step(batches[0]))
  t0, tokens = time.perf_counter(), 0
  for i in range(n):
    b = batches[i % len(batches)]
    m = step(b)
    tokens += int((b["segment_ids"] > 0).sum())
  jax.block_until_ready(m)
  return tokens / (time.perf_counter() - t0)


def time_live(step, spec, tok, n: int):
  """tokens/s of n train steps each fed by next() on a live pipeline (workers 0), as the demo loop runs."""
  import jax

  from gemmax.data import make_pipeline

  it = make_pipeline(spec, tok, demo_data_config(0))
  jax.block_until_ready(step(next(it)))
  t0, tokens = time.perf_counter(), 0
  for _ in range(n):
    b = next(it)
    m = step(b)
    tokens += int((b["segment_ids"] > 0).sum())
  jax.block_until_ready(m)
  dt = time.perf_counter() - t0
  it.close()
  return tokens / dt


def load_avg() -> str:
  return "/".join(f"{x:.2f}" for x in os.getloadavg())


def demo_check(args) -> float:
  import statistics

  from gemmax.data import SourceSpec, load_tokenizer, make_pipeline

  tok = load_tokenizer(args.tokenizer)
  spec = SourceSpec(args.demo_data, kind="alpaca")
  it = make_pipeline(spec, tok, demo_data_config(0))
  cached = [next(it) for _ in range(8)]
  it.close()
  step, n_trainable = demo_train_step()
  print(
    f"demo check: {args.demo_data}, tokenizer {args.tokenizer} (vocab {tok.vocab_size}), batch [8, 256]; "
    f"LoRA r8 on a random {demo_model_config().num_hidden_layers}-layer model, {n_trainable:,} trainable; "
    f"{os.cpu_count()} CPUs, load average {load_avg()} (1/5/15 min)",
    flush=True,
  )
  rates = {"train step (cached batches)": [], "train step fed by a live pipeline (workers 0)": []}
  rates.update({f"pipeline, workers {w}": [] for w in args.workers})
  fills = []
  for r in range(args.rounds):
    rates["train step (cached batches)"].append(time_steps(step, cached, args.steps))
    for w in args.workers:
      tps, fill = time_pipeline(spec, tok, demo_data_config(w), args.batches)
      rates[f"pipeline, workers {w}"].append(tps)
      fills.append(fill)
    rates["train step fed by a live pipeline (workers 0)"].append(
      time_live(step, spec, tok, args.steps)
    )
    print(
      f"round {r + 1}: "
      + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items())
      + f" tokens/s; load {load_avg()}",
      flush=True,
    )
  med = {k: statistics.median(v) for k, v in rates.items()}
  train = med["train step (cached batches)"]
  print(f"\n| side | tokens/s (median of {args.rounds}) | batches/s | x train step |")
  print("|---|---|---|---|")
  per_batch = 8 * 256 * statistics.mean(fills)
  for k, v in med.items():
    print(f"| {k} | {v:,.0f} | {v / per_batch:.2f} | {v / train:.1f} |")
  print(f"packed fill {statistics.mean(fills):.1%}; load average at the end {load_avg()}")
  return med[f"pipeline, workers {args.workers[0]}"] / train


def corpus_table(args):
  from gemmax.data import DataConfig, SourceSpec, load_tokenizer

  d = tempfile.mkdtemp()
  docs = corpus_docs(args.chars)
  write_data(docs, d)
  path = train_tokenizer(docs, d) if args.train_tokenizer else args.tokenizer
  tok = load_tokenizer(path)
  print(
    f"tokenizer {path if not args.train_tokenizer else 'trained here'} vocab {tok.vocab_size}; "
    f"{len(docs)} docs, {sum(map(len, docs))} chars; batch [{args.batch_size}, {args.seq_len}]"
  )
  rows = []
  peer = time_spm(path, docs)
  rows.append(("sentencepiece encode only (peer)", "-", peer, None))
  for kind in ("text", "alpaca"):
    for w in args.workers:
      cfg = DataConfig(
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=0,
        packing=True,
        worker_count=w,
        prefetch=4,
      )
      tps, fill = time_pipeline(
        SourceSpec(os.path.join(d, f"{kind}.jsonl"), kind=kind), tok, cfg, args.batches
      )
      rows.append((f"gemmax pipeline, {kind}, packing", w, tps, fill))
  print("| pipeline | workers | tokens/s | ratio to peer | packed fill |")
  print("|---|---|---|---|---|")
  for name, w, tps, fill in rows:
    print(
      f"| {name} | {w} | {tps:,.0f} | {tps / peer:.2f} | {'-' if fill is None else f'{fill:.1%}'} |"
    )


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--tokenizer", default="checkpoints/gemmax-tiny/tokenizer.model")
  ap.add_argument("--demo-data", default="data/trec6/train.jsonl")
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--steps", type=int, default=8, help="train steps per round")
  ap.add_argument("--batches", type=int, default=150, help="pipeline batches per round")
  ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
  ap.add_argument(
    "--corpus", action="store_true", help="also the stdlib-docstring table against sentencepiece"
  )
  ap.add_argument("--train-tokenizer", action="store_true")
  ap.add_argument("--seq-len", type=int, default=1024)
  ap.add_argument("--batch-size", type=int, default=8)
  ap.add_argument("--chars", type=int, default=3_000_000)
  args = ap.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  ratio = demo_check(args)
  if args.corpus:
    corpus_table(args)
  print(f"pipeline_vs_train_step={ratio:.1f}")


if __name__ == "__main__":
  main()
