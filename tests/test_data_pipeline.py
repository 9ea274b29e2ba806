"""grain pipeline: batch contract, first-fit packing vs a naive packer, truncation, sharding, shuffling,
and exact resumption from a JSON round-tripped iterator state."""

import json

import numpy as np
import pytest
from test_data_fixtures import gemma_spm  # noqa: F401

from gemmax.data import (
  DataConfig,
  SourceSpec,
  load_tokenizer,
  make_eval_pipeline,
  make_pipeline,
  tokenize_example,
)

T = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory, gemma_spm):
  d = tmp_path_factory.mktemp("pipe")
  rng = np.random.default_rng(0)
  words = "the cat sat on a mat with 12 dogs and 345 birds in café Zürich".split()
  rows = [{"text": " ".join(rng.choice(words, size=rng.integers(1, 10)))} for _ in range(40)]
  with open(d / "t.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  tok = load_tokenizer(gemma_spm)
  assert max(len(e[0]) for e in _examples(tok, rows)) < T  # so that packing tests see no truncation
  return str(d / "t.jsonl"), rows, tok


def _examples(tok, rows):
  """Each row shifted on its own: (input_ids, targets, loss_mask)."""
  out = []
  for r in rows:
    ids, mask = tokenize_example(tok, r, "text")
    out.append((ids[:-1], ids[1:], mask[1:]))
  return out


def _collect(it, n=None):
  out = []
  try:
    while n is None or len(out) < n:
      out.append(next(it))
  except StopIteration:
    pass
  return out


def _split_rows(batches):
  """Un-pack: every (input_ids, targets, loss_mask) segment in the batches, checking positions/padding."""
  segs = []
  for b in batches:
    assert set(b) == {"input_ids", "targets", "loss_mask", "positions", "segment_ids"}
    for k, v in b.items():
      assert v.dtype == np.int32 and v.shape[1] == T, k
    for row in range(b["input_ids"].shape[0]):
      seg = b["segment_ids"][row]
      pad = seg == 0
      for k in b:
        assert (b[k][row][pad] == 0).all(), k
      for s in np.unique(seg[~pad]):
        sel = np.flatnonzero(seg == s)
        assert (np.diff(sel) == 1).all()  # contiguous
        assert (b["positions"][row][sel] == np.arange(len(sel))).all()  # restarted positions
        segs.append(tuple(b[k][row][sel] for k in ("input_ids", "targets", "loss_mask")))
  return segs


def _key(ex):
  return tuple(ex[0].tolist())


def test_packing_keeps_every_example_once(data):
  path, rows, tok = data
  cfg = DataConfig(seq_len=T, batch_size=3, shuffle=False, num_epochs=1, prefetch=0)
  batches = _collect(make_pipeline(SourceSpec(path, kind="text"), tok, cfg))
  got = _split_rows(batches)
  want = _examples(tok, rows)
  by_key = {_key(w): w for w in want}
  for g in got:
    w = by_key[_key(g)]
    assert all((a == b).all() for a, b in zip(g, w))
  # only the last, partial batch may be dropped
  assert len(want) - len(got) < 3 * 3
  assert np.mean([(b["segment_ids"] > 0).mean() for b in batches]) > 0.6  # packing fills rows


def _naive_first_fit(examples, seq_len, num_bins):
  """Reference: fill up to num_bins rows first-fit; when an example fits in none, emit them all."""
  rows, bins = [], []
  for ex in examples:
    n = len(ex[0])
    for b in bins:
      if sum(len(e[0]) for e in b) + n <= seq_len:
        b.append(ex)
        break
    else:
      if len(bins) == num_bins:
        rows += bins
        bins = []
      bins.append([ex])
  return rows + bins


def test_first_fit_matches_naive_packer(data):
  path, rows, tok = data
  cfg = DataConfig(seq_len=T, batch_size=2, shuffle=False, num_epochs=1, prefetch=0)
  batches = _collect(make_pipeline(SourceSpec(path, kind="text"), tok, cfg))
  got_rows = [b["input_ids"][r] for b in batches for r in range(2)]
  ref = _naive_first_fit(_examples(tok, rows), T, 2)
  for got, want in zip(got_rows, ref):
    flat = np.concatenate([e[0] for e in want])
    assert (got[: len(flat)] == flat).all() and (got[len(flat) :] == 0).all()
  assert len(got_rows) == len(ref) - len(ref) % 2


def test_no_packing_pads_one_example_per_row(data):
  path, rows, tok = data
  cfg = DataConfig(seq_len=T, batch_size=4, shuffle=False, num_epochs=1, packing=False, prefetch=0)
  b = next(make_pipeline(SourceSpec(path, kind="text"), tok, cfg))
  want = _examples(tok, rows)[:4]
  for r in range(4):
    n = len(want[r][0])
    assert (b["input_ids"][r, :n] == want[r][0]).all() and (b["targets"][r, :n] == want[r][1]).all()
    assert (b["segment_ids"][r] == (np.arange(T) < n)).all()


@pytest.mark.parametrize("policy", ["right", "left", "drop"])
def test_truncation(data, policy):
  path, rows, tok = data
  L = 10
  cfg = DataConfig(
    seq_len=L, batch_size=1, shuffle=False, num_epochs=1, packing=False, truncate=policy, prefetch=0
  )
  got = [
    b["input_ids"][0] for b in _collect(make_pipeline(SourceSpec(path, kind="text"), tok, cfg))
  ]
  want = []
  for ids, _, _ in _examples(tok, rows):
    if len(ids) > L:
      if policy == "drop":
        continue
      ids = ids[:L] if policy == "right" else ids[-L:]
    want.append(np.pad(ids, (0, L - len(ids))))
  assert len(got) == len(want) and all((g == w).all() for g, w in zip(got, want))


def test_sharding_and_shuffle(data):
  path, rows, tok = data
  spec = SourceSpec(path, kind="text")

  def firsts(**kw):
    cfg = DataConfig(seq_len=T, batch_size=1, num_epochs=1, packing=False, prefetch=0, **kw)
    return [_key(s) for s in _split_rows(_collect(make_pipeline(spec, tok, cfg)))]

  shard0 = firsts(shuffle=False, process_index=0, process_count=2)
  shard1 = firsts(shuffle=False, process_index=1, process_count=2)
  every = [_key(e) for e in _examples(tok, rows)]
  assert shard0 == every[0::2] and shard1 == every[1::2]
  a, b, c = firsts(seed=1), firsts(seed=1), firsts(seed=2)
  assert a == b and a != c and a != every and sorted(a) == sorted(every)


def test_eval_pipeline_reads_once_and_repeats_its_batches(data, tmp_path):
  path, _, tok = data
  copy = tmp_path / "heldout.jsonl"
  copy.write_text(open(path).read())
  cfg = DataConfig(seq_len=T, batch_size=3, shuffle=False, num_epochs=1, prefetch=0)
  evaluate = make_eval_pipeline(SourceSpec(str(copy), kind="text"), tok, cfg)
  first = _collect(evaluate())
  copy.unlink()  # every pass after this one must come from what was read at construction
  _collect(evaluate(), 1)  # an evaluation cut short (eval_batches) does not disturb the next
  second = _collect(evaluate())
  want = _collect(make_pipeline(SourceSpec(path, kind="text"), tok, cfg))
  assert len(first) == len(second) == len(want) > 1
  assert all(
    (a[k] == b[k]).all() and (a[k] == w[k]).all() for a, b, w in zip(first, second, want) for k in w
  )
  with pytest.raises(ValueError, match="num_epochs=1 and shuffle=False"):
    make_eval_pipeline(SourceSpec(path, kind="text"), tok, DataConfig(seq_len=T, batch_size=3))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_yields_the_same_batches(data, prefetch):
  path, _, tok = data
  spec = SourceSpec(path, kind="text")
  cfg = DataConfig(seq_len=T, batch_size=2, seed=3, num_epochs=None, prefetch=prefetch)
  it = make_pipeline(spec, tok, cfg)
  _collect(it, 7)
  state = json.loads(json.dumps(it.get_state()))
  want = _collect(it, 30)  # crosses epoch boundaries (~20 rows per epoch)
  it2 = make_pipeline(spec, tok, cfg)
  it2.set_state(state)
  got = _collect(it2, 30)
  assert all((g[k] == w[k]).all() for g, w in zip(got, want) for k in w)
  it.close(), it2.close()


def test_chat_loss_mask_survives_packing(tmp_path, gemma_spm):
  tok = load_tokenizer(gemma_spm)
  conv = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
  (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(conv) for _ in range(5)))
  cfg = DataConfig(seq_len=64, batch_size=1, shuffle=False, num_epochs=1, prefetch=0)
  b = next(make_pipeline(SourceSpec(str(tmp_path / "c.jsonl"), kind="chat"), tok, cfg))
  targets = b["targets"][0][b["loss_mask"][0] == 1]
  n_seg = b["segment_ids"].max()
  assert (
    n_seg >= 2
    and targets.tolist() == (tok.encode("4") + [tok.token_to_id("<end_of_turn>")]) * n_seg
  )


def _resume_with_workers(path, tok):
  spec = SourceSpec(path, kind="text")
  cfg = DataConfig(seq_len=T, batch_size=2, seed=3, worker_count=2, prefetch=2)
  it = make_pipeline(spec, tok, cfg)
  _collect(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  want = _collect(it, 10)
  it.close()
  it2 = make_pipeline(spec, tok, cfg)
  it2.set_state(state)
  got = _collect(it2, 10)
  it2.close()
  return got, want


@pytest.mark.slow
def test_worker_processes_resume(data):
  path, rows, tok = data
  got, want = _resume_with_workers(path, tok)
  assert all((g[k] == w[k]).all() for g, w in zip(got, want) for k in w)
  segs = _split_rows(want)
  every = {_key(e) for e in _examples(tok, rows)}
  assert all(_key(s) in every for s in segs)


def test_truncation_drops_are_reported_with_row_numbers(data, tmp_path):
  path, rows, tok = data
  L = 10
  cfg = DataConfig(
    seq_len=L, batch_size=1, shuffle=False, num_epochs=1, packing=False, truncate="drop", prefetch=0
  )
  it = make_pipeline(SourceSpec(path, kind="text"), tok, cfg)
  long = [i + 1 for i, e in enumerate(_examples(tok, rows)) if len(e[0]) > L]
  assert long and len(long) < len(rows)
  assert [n for _, n, _ in it.bad_rows.rows] == long
  assert it.bad_rows.counts == {"too long": len(long)}
  assert f"t.jsonl row {long[0]}: too long" in it.bad_rows.summary()
  assert len(_collect(it)) == len(rows) - len(long)
  # right truncation of an Alpaca prompt longer than seq_len leaves no response token: reported too
  good = {"instruction": "Say hi", "input": "", "output": "hi"}
  (tmp_path / "a.jsonl").write_text(
    "\n".join(json.dumps(r) for r in [good, {**good, "input": "word " * 150}])
  )
  it = make_pipeline(
    SourceSpec(str(tmp_path / "a.jsonl")), tok, DataConfig(seq_len=96, batch_size=1, num_epochs=1)
  )
  assert [(n, r.split(":")[0]) for _, n, r in it.bad_rows.rows] == [(2, "no target")]


def _within(seconds, fn):
  """fn() or its exception, failing the test if it takes longer (the bug this guards against was a hang)."""
  import signal

  def alarm(*_):
    raise TimeoutError(f"no answer within {seconds} s")

  old = signal.signal(signal.SIGALRM, alarm)
  signal.alarm(seconds)
  try:
    return fn()
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_every_example_dropped_fails_naming_the_file(tmp_path, gemma_spm):
  tok = load_tokenizer(gemma_spm)
  (tmp_path / "long.jsonl").write_text(
    "\n".join(json.dumps({"text": "many words " * 9}) for _ in range(5))
  )
  cfg = DataConfig(
    seq_len=8, batch_size=2, truncate="drop"
  )  # repeats forever: used to spin in the filter
  with pytest.raises(
    ValueError, match=r"every example of .*long\.jsonl was dropped by truncation: 5 bad rows"
  ) as e:
    _within(
      20,
      lambda: next(make_pipeline(SourceSpec(str(tmp_path / "long.jsonl"), kind="text"), tok, cfg)),
    )
  assert "\n" not in str(e.value)


def test_screening_shortcut_agrees_with_full_check(data):
  from gemmax.data.pipeline import _Tokenize

  _, rows, tok = data
  items = [("text", "gemma", r) for r in rows]
  items += [
    (
      "alpaca",
      "gemma",
      {"instruction": "Repeat: " + r["text"], "input": r["text"][:9], "output": r["text"]},
    )
    for r in rows
  ]
  items += [
    (
      "chat",
      "gemma",
      {
        "messages": [
          {"role": "user", "content": r["text"]},
          {"role": "assistant", "content": r["text"][::-1]},
        ]
      },
    )
    for r in rows
  ]
  for seq_len in (4, 12, 40, 64):
    for truncate in ("right", "left", "drop"):
      t = _Tokenize(tok, seq_len, truncate, drop_unsupervised=True)
      assert [t.drop_reason(i) for i in items] == [t.check(i)[1] for i in items], (
        seq_len,
        truncate,
      )
