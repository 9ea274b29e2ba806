"""DPO pairs from the bundled TREC-6 data: data/trec6/pairs_{train,test}.jsonl.

    python experiments/prepare_pairs.py [--train_rows 1000] [--seed 0]

Each Alpaca row of data/trec6/{train,test}.jsonl becomes {prompt, chosen, rejected}: the prompt is
the instruction and the question as one user turn (what experiments/configs/demo.py puts to the
model under its chat template), chosen the right label, rejected one of the five wrong labels drawn
with the seed (gemmax.data.classification_pairs). The first `train_rows` training rows are kept
(the files are committed: small), every test row. Deterministic: rerunning reproduces the files.
"""

from __future__ import annotations

import argparse
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "data", "trec6")


def write_pairs(src: str, dst: str, rows: int, seed: int) -> int:
  from gemmax.data import classification_pairs
  from gemmax.evals.loading import read_records

  records = read_records(src)
  classes = sorted({r["output"] for r in read_records(os.path.join(DATA, "train.jsonl"))})
  pairs = classification_pairs(records[:rows] if rows else records, seed=seed, classes=classes)
  with open(dst, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(p) + "\n" for p in pairs)
  return len(pairs)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--train_rows", type=int, default=1000, help="0 = every training row")
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()
  for split, rows, seed in (("train", a.train_rows, a.seed), ("test", 0, a.seed + 1)):
    dst = os.path.join(DATA, f"pairs_{split}.jsonl")
    n = write_pairs(os.path.join(DATA, f"{split}.jsonl"), dst, rows, seed)
    print(f"{dst}: {n} pairs")


if __name__ == "__main__":
  main()
