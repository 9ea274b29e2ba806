"""Train the bundled SentencePiece tokenizer (checkpoints/gemmax-tiny/tokenizer.model).

Gemma-like: BPE, 8192 pieces, ids pad=0 eos=1 bos=2 unk=3, `<start_of_turn>` / `<end_of_turn>` as
single user-defined pieces, digits split one per piece, byte fallback (any UTF-8 text round-trips),
identity normalization and no dummy prefix / whitespace folding (so decode(encode(x)) == x).

It sees exactly the text the model is pretrained on: the corpus (`gutenberg-shakespeare`, built on
first use by gemmax.data.corpus, or a text file) plus the TREC-6 train questions (no instructions,
no labels). A piece learned from other text would never be a pretraining target, and its tied
embedding ends up pushed away from every hidden state: the first tokenizer also saw the TREC rows as chat turns, made each
line-initial label word one such piece, and LoRA could not lift them (15 nats). All input
lines are used (no sampling) and training runs on one thread, so the output is byte-for-byte
reproducible.

Usage: python experiments/train_tokenizer.py [--corpus gutenberg-shakespeare|FILE] [--out DIR]
"""

import argparse
import contextlib
import json
import os
import pathlib
import tempfile
import time

import sentencepiece as spm

from gemmax import cli
from gemmax.data import corpus as corpora

ROOT = pathlib.Path(__file__).resolve().parents[1]
VOCAB_SIZE = 8192
SPECIAL = {"pad": (0, "<pad>"), "eos": (1, "<eos>"), "bos": (2, "<bos>"), "unk": (3, "<unk>")}
CHAT_MARKERS = ["<start_of_turn>", "<end_of_turn>"]


def training_lines(corpus, trec_train):
  """Non-empty corpus paragraphs, then the TREC-6 train questions."""
  lines = [l for l in corpus.read_text(encoding="utf-8").splitlines() if l.strip()]
  rows = [json.loads(l) for l in trec_train.read_text(encoding="utf-8").splitlines() if l.strip()]
  for n, row in enumerate(rows, 1):
    if not {"instruction", "input", "output"} <= row.keys():
      raise SystemExit(f"{trec_train} row {n}: needs 'instruction', 'input' and 'output'")
  return lines + [r["input"] for r in rows]


def train(lines, out_dir):
  out_dir.mkdir(parents=True, exist_ok=True)
  spm.set_random_generator_seed(0)
  # Relative paths inside a temp dir: the trainer stores them in the model file, and an absolute
  # temp path would make every run's bytes differ.
  with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
    pathlib.Path("train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
      input="train.txt",
      model_prefix="tokenizer",
      model_type="bpe",
      vocab_size=VOCAB_SIZE,
      character_coverage=1.0,
      split_digits=True,
      byte_fallback=True,
      normalization_rule_name="identity",
      add_dummy_prefix=False,
      remove_extra_whitespaces=False,
      allow_whitespace_only_pieces=True,
      pad_id=SPECIAL["pad"][0],
      pad_piece=SPECIAL["pad"][1],
      eos_id=SPECIAL["eos"][0],
      eos_piece=SPECIAL["eos"][1],
      bos_id=SPECIAL["bos"][0],
      bos_piece=SPECIAL["bos"][1],
      unk_id=SPECIAL["unk"][0],
      unk_piece=SPECIAL["unk"][1],
      user_defined_symbols=CHAT_MARKERS,
      input_sentence_size=0,
      shuffle_input_sentence=False,  # every line, in order
      max_sentence_length=1 << 16,  # long reflowed paragraphs are kept, not skipped
      num_threads=1,
      minloglevel=2,
    )
    model = pathlib.Path("tokenizer.model").read_bytes()
  (out_dir / "tokenizer.model").write_bytes(model)
  write_hf_config(out_dir)


def write_hf_config(out_dir):
  """tokenizer_config.json / special_tokens_map.json so HF GemmaTokenizer can load the dir too."""
  names = {f"{k}_token": v[1] for k, v in SPECIAL.items()}
  (out_dir / "special_tokens_map.json").write_text(
    json.dumps({**names, "additional_special_tokens": CHAT_MARKERS}, indent=2) + "\n"
  )
  (out_dir / "tokenizer_config.json").write_text(
    json.dumps(
      {
        # mask_token null: otherwise transformers appends a <mask> at id 8192, past the vocab.
        "tokenizer_class": "GemmaTokenizer",
        **names,
        "mask_token": None,
        "additional_special_tokens": CHAT_MARKERS,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 8192,
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
      },
      indent=2,
    )
    + "\n"
  )


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--corpus", default="gutenberg-shakespeare", help="a corpus name or a text file")
  p.add_argument("--trec-train", type=pathlib.Path, default=ROOT / "data/trec6/train.jsonl")
  p.add_argument("--out", type=pathlib.Path, default=ROOT / "checkpoints/gemmax-tiny")
  p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
  args = p.parse_args()
  if args.corpus not in corpora.CORPORA and not os.path.isfile(args.corpus):
    raise FileNotFoundError(f"{args.corpus}: neither a file nor a corpus name")
  start = time.perf_counter()
  lines = training_lines(pathlib.Path(corpora.resolve(args.corpus)), args.trec_train)
  train(lines, args.out)
  size = (args.out / "tokenizer.model").stat().st_size
  print(
    f"{args.out / 'tokenizer.model'}: {size:,} bytes, {len(lines):,} training lines, "
    f"{time.perf_counter() - start:.1f} s"
  )


if __name__ == "__main__":
  cli.run_plain(main)
