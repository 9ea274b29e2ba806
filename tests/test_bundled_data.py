"""Checks on the committed data/trec6 dataset and checkpoints/gemmax-tiny tokenizer."""

import collections
import importlib.util
import json
import pathlib
import re

import pytest
import sentencepiece as spm

ROOT = pathlib.Path(__file__).resolve().parents[1]
TREC = ROOT / "data" / "trec6"
SPLITS = ("train", "validation", "test")
TOKENIZER = ROOT / "checkpoints" / "gemmax-tiny" / "tokenizer.model"


def load(split):
  path = TREC / f"{split}.jsonl"
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def splits():
  return {name: load(name) for name in SPLITS}


@pytest.fixture(scope="module")
def sp():
  return spm.SentencePieceProcessor(model_file=str(TOKENIZER))


def label_words(instruction):
  """The label words the instruction lists after 'one word:' (e.g. 'a, b, or c.')."""
  listed = instruction.split("one word:")[1].strip().rstrip(".")
  return [w.strip() for w in re.split(r",\s*(?:or\s+)?|\s+or\s+", listed) if w.strip()]


# ---------------------------------------------------------------- dataset


def test_rows_have_alpaca_fields(splits):
  for name, rows in splits.items():
    for n, row in enumerate(rows, 1):
      assert set(row) == {"instruction", "input", "output"}, f"{name} row {n}: {row}"
      assert all(isinstance(v, str) and v.strip() for v in row.values()), f"{name} row {n}"


def test_outputs_are_listed_label_words(splits):
  instructions = {r["instruction"] for rows in splits.values() for r in rows}
  assert len(instructions) == 1
  words = label_words(instructions.pop())
  assert words == ["abbreviation", "description", "entity", "human", "location", "number"]
  for name, rows in splits.items():
    assert {r["output"] for r in rows} == set(words), name  # every class in every split


def test_size_and_classes(splits):
  total = sum(map(len, splits.values()))
  assert total >= 1000
  assert len({r["output"] for r in splits["train"]}) >= 4
  assert [len(splits[s]) for s in SPLITS] == [4304, 538, 538]


def test_splits_disjoint_and_stratified(splits):
  inputs = {name: [r["input"] for r in rows] for name, rows in splits.items()}
  for name, texts in inputs.items():
    assert len(texts) == len(set(texts)), f"duplicate questions within {name}"
  for a in SPLITS:
    for b in SPLITS:
      if a < b:
        assert not set(inputs[a]) & set(inputs[b]), f"{a} and {b} share questions"
  total = collections.Counter(r["output"] for rows in splits.values() for r in rows)
  for name, frac in (("validation", 0.1), ("test", 0.1)):
    counts = collections.Counter(r["output"] for r in splits[name])
    for label, n in total.items():
      assert abs(counts[label] - frac * n) <= 1, (name, label)


def test_raw_file_matches_alpaca_files(splits):
  raw = [json.loads(l) for l in (TREC / "all.jsonl").read_text(encoding="utf-8").splitlines()]
  for name, rows in splits.items():
    assert [(r["text"], r["label"]) for r in raw if r["split"] == name] == [
      (r["input"], r["output"]) for r in rows
    ]
  assert all(
    r["fine_label"].split(":")[0] in {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"} for r in raw
  )


def test_readme_baseline_matches_test_split(splits):
  counts = collections.Counter(r["output"] for r in splits["test"])
  baseline = 100 * max(counts.values()) / len(splits["test"])
  readme = (ROOT / "data" / "README.md").read_text(encoding="utf-8")
  stated = re.search(r"majority-class baseline[^\n]*?([\d.]+)\s*%", readme, re.I)
  assert stated, "data/README.md does not state the majority-class baseline"
  assert float(stated.group(1)) == pytest.approx(baseline, abs=0.05)


def test_detokenize_undoes_trec_spacing():
  spec = importlib.util.spec_from_file_location(
    "prepare_data", ROOT / "experiments" / "prepare_data.py"
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert mod.detokenize("What is `` Nine Inch Nails '' ?") == 'What is "Nine Inch Nails"?'
  assert mod.detokenize("When was Ozzy Osbourne born ?") == "When was Ozzy Osbourne born?"
  assert mod.detokenize("What does ` PSI ' stand for ?") == "What does 'PSI' stand for?"
  assert mod.detokenize("Why do n't cats , or dogs , fly ?") == "Why don't cats, or dogs, fly?"


# ---------------------------------------------------------------- tokenizer


def test_vocab_and_special_ids(sp):
  assert sp.vocab_size() == 8192
  assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
  assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]


def test_chat_markers_are_single_tokens(sp):
  text = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
  ids = sp.encode(text)
  start, end = sp.piece_to_id("<start_of_turn>"), sp.piece_to_id("<end_of_turn>")
  assert sp.encode("<start_of_turn>") == [start] and sp.encode("<end_of_turn>") == [end]
  assert ids.count(start) == 2 and ids.count(end) == 1
  assert sp.decode(ids) == text


def test_digits_are_split(sp):
  text = "In 1948, 3.14159 and 2024 were 12345678901 numbers."
  pieces = sp.encode(text, out_type=str)
  digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
  assert all(len(p.lstrip("\u2581")) == 1 for p in digit_pieces), digit_pieces
  assert "".join(p.lstrip("\u2581") for p in digit_pieces) == re.sub(r"\D", "", text)
  for d in "0123456789":  # every digit has its own piece
    assert sp.piece_to_id(d) != sp.unk_id()


@pytest.mark.parametrize(
  "text",
  [
    "Café naïve façade — “quoted” …",
    "東京の天気は晴れです。",
    "Emoji 🙂🚀 and Ωμέγα, Привет, עברית",
    "  two  spaces,\ttab,\nnewline\n\n and trailing space ",
  ],
)
def test_byte_fallback_round_trips_exactly(sp, text):
  ids = sp.encode(text)
  assert sp.unk_id() not in ids
  assert sp.decode(ids) == text
  if not text.isascii():
    assert any(sp.is_byte(i) for i in ids)


def test_label_words_and_questions_are_short(sp, splits):
  first = set()
  for word in ("abbreviation", "description", "entity", "human", "location", "number"):
    ids = sp.encode(word)  # line-initial form, as after "### Response:\n"
    assert 1 <= len(ids) <= 4, (word, ids)
    first.add(ids[0])
  assert len(first) == 6  # the first label token alone tells the classes apart
  lengths = [len(sp.encode(r["input"])) for rows in splits.values() for r in rows]
  assert max(lengths) <= 64


def test_hf_gemma_tokenizer_agrees(sp):
  """The directory also loads as an HF GemmaTokenizer with the same ids (plus <bos>)."""
  transformers = pytest.importorskip("transformers")
  hf = transformers.AutoTokenizer.from_pretrained(str(TOKENIZER.parent))
  assert len(hf) == 8192
  assert (hf.pad_token_id, hf.eos_token_id, hf.bos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
  for text in ["<start_of_turn>user\nWho killed Gandhi in 1948?<end_of_turn>\n", "Ünïcode 🙂 ok"]:
    assert hf(text)["input_ids"] == [2] + sp.encode(text)


@pytest.mark.slow
def test_tokenizer_training_is_reproducible(tmp_path):
  import subprocess
  import sys

  subprocess.run(
    [sys.executable, str(ROOT / "experiments" / "train_tokenizer.py"), "--out", str(tmp_path)],
    check=True,
    capture_output=True,
  )
  assert (tmp_path / "tokenizer.model").read_bytes() == TOKENIZER.read_bytes()


def test_preference_pairs_are_reproducible(tmp_path):
  """data/trec6/pairs_{train,test}.jsonl are what experiments/prepare_pairs.py writes."""
  import sys

  sys.path.insert(0, str(ROOT / "experiments"))
  from prepare_pairs import write_pairs

  for split, rows, seed in (("train", 1000, 0), ("test", 0, 1)):
    out = tmp_path / f"{split}.jsonl"
    write_pairs(str(TREC / f"{split}.jsonl"), str(out), rows, seed)
    assert out.read_bytes() == (TREC / f"pairs_{split}.jsonl").read_bytes(), split
