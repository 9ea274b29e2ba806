"""gemmax.data.preference: {prompt, chosen, rejected} rows (strings or message lists, JSONL or
Parquet) -> batches of whole pairs whose loss masks cover exactly each answer and its end token;
bad rows named by file and row; pairs too long for seq_len cut or dropped."""

import json
import os

import numpy as np
import pytest

from finetune_assets import write_tokenizer
from gemmax.data import alpaca_prompt, load_tokenizer
from gemmax.data.preference import PairSpec, load_pairs, preference_batches, tokenize_pairs
from gemmax.errors import GemmaxError

ROWS = [
  {"prompt": "Name the colour of the sky.", "chosen": "blue", "rejected": "green"},
  {"prompt": "Give the opposite of hot.", "chosen": "cold", "rejected": "warm"},
  {
    "prompt": [{"role": "user", "content": "Translate cat to French."}],
    "chosen": [{"role": "assistant", "content": "chat"}],
    "rejected": "chien",
  },
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("pref_tok"))
  texts = [json.dumps(r) for r in ROWS] + [alpaca_prompt("x"), "<start_of_turn>user model"]
  write_tokenizer(d, texts * 8)
  return load_tokenizer(d)


def _write(path, rows):
  with open(path, "w") as f:
    f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
  return str(path)


def _chosen_first(batch):
  """[B, 2, T] pairs -> [2B, T] rows, the B chosen completions first."""
  return {k: np.concatenate([v[:, 0], v[:, 1]]) for k, v in batch.items()}


def test_string_pairs_mask_only_the_answers(tmp_path, tok):
  pairs, bad = load_pairs(PairSpec(_write(tmp_path / "p.jsonl", ROWS[:2])))
  assert bad.count == 0 and [p.kind for p in pairs] == ["alpaca", "alpaca"]
  tokenized, dropped = tokenize_pairs(pairs, tok, "alpaca", seq_len=96)
  assert dropped == []
  batch = next(preference_batches(tokenized, 2, 96, shuffle=False))
  assert batch["input_ids"].shape == (2, 2, 96)
  batch = _chosen_first(batch)
  for row, pair, which in [
    (0, 0, "chosen"),
    (1, 1, "chosen"),
    (2, 0, "rejected"),
    (3, 1, "rejected"),
  ]:
    targets = batch["targets"][row][batch["loss_mask"][row] == 1]
    answer = ROWS[pair][which]
    assert _decode(tok, targets[:-1]) == answer and targets[-1] == tok.eos_id
    n = int(batch["segment_ids"][row].sum())
    assert _decode(tok, batch["input_ids"][row][:n]) == alpaca_prompt(ROWS[pair]["prompt"]) + answer
  # chosen and rejected of one pair share their prompt tokens
  assert np.array_equal(batch["input_ids"][0][:10], batch["input_ids"][2][:10])


def _decode(tok, ids):
  """The test tokenizer has no byte-level decoder: undo its markers by hand."""
  return tok.decode(list(ids)).replace(" ", "").replace("Ġ", " ").replace("Ċ", "\n")


def test_message_pairs_under_a_chat_template_from_parquet(tmp_path, tok):
  import pyarrow as pa
  import pyarrow.parquet as pq

  answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
  rows = [dict(ROWS[2], chosen=answer("chat")), dict(ROWS[2], chosen=answer("le chat"))]
  path = str(tmp_path / "p.parquet")
  pq.write_table(pa.Table.from_pylist(rows), path)
  pairs, _ = load_pairs(PairSpec(path))
  assert [p.kind for p in pairs] == ["chat", "chat"]
  tokenized, _ = tokenize_pairs(pairs, tok, "gemma", seq_len=64)
  batch = _chosen_first(next(preference_batches(tokenized, 2, 64, shuffle=False)))
  text = _decode(tok, batch["input_ids"][0][: int(batch["segment_ids"][0].sum())])
  assert text == "user\nTranslate cat to French.\nmodel\nchat"  # special tokens not shown
  end = tok.encode("<end_of_turn>")[-1]
  for row, want in [(0, "chat"), (1, "le chat"), (2, "chien"), (3, "chien")]:
    targets = batch["targets"][row][batch["loss_mask"][row] == 1]
    assert _decode(tok, targets[:-1]) == want and targets[-1] == end


def test_bad_rows_are_named(tmp_path):
  rows = [
    ROWS[0],
    {"prompt": "x", "chosen": "a"},
    {"prompt": "x", "chosen": "same", "rejected": "same"},
    {"prompt": "x", "chosen": 3, "rejected": "b"},
    {"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"},
    {"prompt": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"},
    "not json",
  ]
  path = _write(tmp_path / "bad.jsonl", rows)
  with pytest.raises(GemmaxError) as e:
    load_pairs(PairSpec(path))
  assert "bad.jsonl row 2: missing field: 'rejected'" in str(e.value)
  pairs, bad = load_pairs(PairSpec(path), on_bad_rows="skip")
  assert len(pairs) == 1 and [n for _, n, _ in bad.rows] == [2, 3, 4, 5, 6, 7]
  reasons = [r for _, _, r in bad.rows]
  assert "identical" in reasons[1] and "non-string: field 'chosen'" in reasons[2]
  assert "lacks 'role' or 'content'" in reasons[3] and "must end with a user" in reasons[4]
  assert "invalid JSON" in reasons[5]
  with pytest.raises(GemmaxError, match="no valid pairs"):
    load_pairs(PairSpec(_write(tmp_path / "none.jsonl", rows[1:3])), on_bad_rows="skip")


def test_long_pairs_are_cut_or_dropped(tmp_path, tok):
  long_answer = " ".join(["blue"] * 200)
  rows = [dict(ROWS[0], chosen=long_answer), dict(ROWS[1], prompt="hot " * 300)]
  pairs, _ = load_pairs(PairSpec(_write(tmp_path / "l.jsonl", rows)))
  tokenized, dropped = tokenize_pairs(pairs, tok, "alpaca", seq_len=64)
  assert len(tokenized) == 1 and dropped == [(os.path.join(str(tmp_path), "l.jsonl"), 2)]
  batch = _chosen_first(next(preference_batches(tokenized, 1, 64, shuffle=False)))
  assert batch["loss_mask"][0].sum() > 0 and batch["segment_ids"][0].sum() == 64
  with pytest.raises(GemmaxError, match="every pair loses its completions at seq_len 8"):
    tokenize_pairs(pairs, tok, "alpaca", seq_len=8)


def test_batches_resume_from_their_state(tmp_path, tok):
  """get_state / set_state: a fresh iterator set to a state yields what the first one yields
  next (the trainer checkpoints it; a resumed run sees the same batches)."""
  pairs, _ = load_pairs(PairSpec(_write(tmp_path / "p.jsonl", ROWS[:2] * 3)))
  tokenized, _ = tokenize_pairs(pairs, tok, "alpaca", seq_len=48)
  a = preference_batches(tokenized, 2, 48, seed=3)
  for _ in range(4):  # into the second epoch (3 batches per epoch)
    next(a)
  b = preference_batches(tokenized, 2, 48, seed=3)
  b.set_state(json.loads(json.dumps(a.get_state())))
  assert b.get_state() == {"batches": 4}
  for _ in range(3):
    x, y = next(a), next(b)
    assert all(np.array_equal(x[k], y[k]) for k in x)


def test_classification_pairs_from_labelled_rows():
  from gemmax.data import classification_pairs
  from gemmax.data.formats import alpaca_messages

  rows = [
    {"instruction": "Which kind?", "input": f"question {i}", "output": c}
    for i, c in enumerate(["a", "b", "c", "a", "b", "c"] * 5)
  ]
  pairs = classification_pairs(rows, seed=1)
  assert pairs == classification_pairs(rows, seed=1)  # seeded
  assert pairs != classification_pairs(rows, seed=2)
  for r, p in zip(rows, pairs):
    assert p["chosen"] == r["output"] and p["rejected"] in {"a", "b", "c"} - {r["output"]}
    assert p["prompt"] == alpaca_messages(r)[0]["content"]  # the user turn fine-tuning renders
  assert {p["rejected"] for p in pairs} == {"a", "b", "c"}
  with pytest.raises(GemmaxError, match="not one of the classes"):
    classification_pairs(rows, classes=["a", "b"])
  with pytest.raises(GemmaxError, match="at least 2 classes"):
    classification_pairs(rows[:1])
