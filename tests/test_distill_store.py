"""The distillation top-k store: ArrayRecord shards, manifest, grain reading, mismatches, resume."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from gemmax import data, distill
from gemmax.distill import StoreError, TopKStore, write_teacher_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER = os.path.join(ROOT, "checkpoints", "gemmax-tiny", "tokenizer.model")
K = 8
TEXTS = [
  "It was a dark and stormy night.",
  "The king said nothing at all.",
  "What is the capital of France?",
  "Sherlock Holmes looked at the letter twice.",
  "A short one.",
  "Then the rain stopped and the town was quiet again for a while.",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  from gemmax.models import ModelConfig, Transformer

  d = tmp_path_factory.mktemp("store")
  with open(d / "text.jsonl", "w") as f:
    f.writelines(json.dumps({"text": t}) + "\n" for t in TEXTS * 3)
  with open(d / "alpaca.jsonl", "w") as f:
    f.writelines(
      json.dumps({"instruction": "Repeat the text.", "input": t, "output": t}) + "\n" for t in TEXTS
    )
  tok = data.load_tokenizer(TOKENIZER)
  teacher = Transformer(
    ModelConfig.preset("gemma2-tiny", num_hidden_layers=2, vocab_size=8192), rngs=nnx.Rngs(0)
  )
  # a sharper teacher than the 0.02 init, so top-k mass and the tail are both far from 0 and 1
  teacher.embed_tokens.embedding.set_value(teacher.embed_tokens.embedding[...] * 10.0)
  return d, tok, teacher


def _write(env, directory, path="text.jsonl", kind="text", **kw):
  d, tok, teacher = env
  args = dict(k=K, seq_len=32, batch_size=2, num_shards=2, progress=False, teacher_id="tiny")
  args.update(kw)
  return write_teacher_store(
    teacher, tok, data.SourceSpec(str(d / path), kind=kind), str(directory), **args
  )


def test_record_roundtrip():
  rng = np.random.default_rng(0)
  n = 11
  tokens = rng.integers(0, 100, n + 1)
  mask = rng.integers(0, 2, n)
  ids = rng.integers(0, 100, (n, K))
  probs = rng.random((n, K)).astype(np.float16)
  tail = rng.random(n).astype(np.float16)
  ex = distill.decode_record(distill.encode_record(tokens, mask, ids, probs, tail), K)
  np.testing.assert_array_equal(ex["input_ids"], tokens[:-1])
  np.testing.assert_array_equal(ex["targets"], tokens[1:])
  np.testing.assert_array_equal(ex["loss_mask"], mask)
  m = mask.astype(bool)
  np.testing.assert_array_equal(ex["topk_ids"][m], ids[m])
  np.testing.assert_array_equal(ex["topk_probs"][m], probs[m])
  np.testing.assert_array_equal(ex["topk_tail"][m], tail[m])
  assert not ex["topk_ids"][~m].any() and not ex["topk_probs"][~m].any()
  with pytest.raises(StoreError, match="does not parse"):
    distill.decode_record(distill.encode_record(tokens, mask, ids, probs, tail), K + 1)


def test_store_contents_manifest_and_size(env, tmp_path):
  d, tok, teacher = env
  manifest = _write(env, tmp_path / "s")
  store = TopKStore(str(tmp_path / "s"))
  spec = manifest["spec"]
  assert spec["k"] == K and spec["temperature"] == 1.0 and spec["teacher"] == "tiny"
  assert spec["tokenizer"] == tok.fingerprint
  assert spec["dataset"] == distill.dataset_fingerprint(
    data.SourceSpec(str(d / "text.jsonl"), kind="text")
  )
  assert len(store) == len(TEXTS) * 3 == manifest["stats"]["examples"]
  stats = manifest["stats"]
  assert sum(os.path.getsize(p) for p in store.paths) == stats["bytes"]
  assert stats["record_bytes"] / stats["tokens"] <= 6 * K + 8, stats  # the format's bound
  # every record equals the teacher run on that example alone (the packing kept examples apart)
  reference = nnx.jit(lambda m, x: (m(x)[0], *distill.select_topk(m(x)[0], K)))
  for i in (1, len(store) - 1):  # one example per shard
    ex = store.example(i)
    ids = tok.encode(TEXTS[i % len(TEXTS)], add_bos=True, add_eos=True)
    np.testing.assert_array_equal(ex["input_ids"], ids[:-1])
    logits, ref_ids, ref_p, ref_tail = reference(teacher, np.asarray([ids[:-1]], np.int32))
    np.testing.assert_array_equal(ex["topk_ids"][:, 0], ref_ids[:, 0])
    p_at = np.take_along_axis(np.asarray(jax.nn.softmax(logits, -1)), ex["topk_ids"], -1)
    np.testing.assert_allclose(ex["topk_probs"].astype(np.float32), p_at, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(ex["topk_tail"].astype(np.float32), ref_tail, rtol=2e-3, atol=1e-4)
  assert 0.05 < float(np.mean(ex["topk_tail"])) < 0.95  # a real tail, kept


def test_bytes_per_token_on_disk(env, tmp_path):
  """<= 6k + 8 bytes per token in the shard files, once the store outweighs the ~128 KiB each
  ArrayRecord file carries regardless of size (a real store is MBs to GBs)."""
  d, _, _ = env
  rng = np.random.default_rng(0)
  words = " ".join(TEXTS).split()
  with open(d / "many.jsonl", "w") as f:
    for _ in range(700):
      f.write(json.dumps({"text": " ".join(rng.choice(words, 12))}) + "\n")
  stats = _write(env, tmp_path / "s", path="many.jsonl", num_shards=1)["stats"]
  assert stats["tokens"] > 9000
  assert stats["record_bytes_per_token"] <= 6 * K + 8, stats
  assert stats["bytes_per_token"] <= 6 * K + 8, stats


def test_pipeline_batches_and_resume(env, tmp_path):
  _write(env, tmp_path / "s", path="alpaca.jsonl", kind="alpaca", seq_len=96)
  store = TopKStore(str(tmp_path / "s"))
  cfg = data.DataConfig(seq_len=96, batch_size=2, seed=1, prefetch=0)
  it = distill.store_pipeline(store, cfg)
  batch = next(it)
  assert batch["topk_ids"].shape == (2, 96, K) and batch["topk_ids"].dtype == np.int32
  assert batch["topk_probs"].dtype == np.float16 and batch["topk_tail"].shape == (2, 96)
  m = batch["loss_mask"].astype(bool)
  assert m.any() and (~m & (batch["segment_ids"] > 0)).any()  # Alpaca prompts are not scored
  assert not batch["topk_probs"][~m].any()  # ... and carry no distribution
  np.testing.assert_allclose(
    batch["topk_probs"][m].astype(np.float32).sum(-1) + batch["topk_tail"][m], 1.0, atol=5e-3
  )
  state = it.get_state()
  expected = next(it)
  again = distill.store_pipeline(store, cfg)
  again.set_state(state)
  for key, value in next(again).items():
    np.testing.assert_array_equal(value, expected[key])


def test_mismatches_fail_clearly(env, tmp_path):
  d, tok, _ = env
  _write(env, tmp_path / "s")
  store = TopKStore(str(tmp_path / "s"))
  with pytest.raises(StoreError, match="tokenizer mismatch"):
    store.check(tokenizer="f" * 64)  # another tokenizer's fingerprint
  other = distill.dataset_fingerprint(data.SourceSpec(str(d / "alpaca.jsonl"), kind="alpaca"))
  with pytest.raises(StoreError, match="dataset mismatch.*text.jsonl"):
    store.check(dataset=other)
  with pytest.raises(StoreError, match="vocab_size 256"):
    store.check(vocab_size=256)
  store.check(tokenizer=tok, vocab_size=8192)  # the matching ones pass
  with pytest.raises(StoreError, match="k: store has 8, this run has 4"):
    _write(env, tmp_path / "s", k=4)
  with pytest.raises(StoreError, match="no manifest.json"):
    TopKStore(str(tmp_path / "nothing"))


def test_resume_rewrites_only_missing_shards(env, tmp_path):
  directory = tmp_path / "s"
  _write(env, directory, sampling="gumbel", num_shards=3)
  store = TopKStore(str(directory))
  before = [open(p, "rb").read() for p in store.paths]
  kept = os.path.getmtime(store.paths[0])
  # an interrupted run: shard 1 never finished, the manifest not completed
  os.remove(store.paths[1])
  os.remove(store.paths[1].replace(".array_record", ".json"))
  manifest = json.load(open(directory / "manifest.json"))
  manifest.pop("stats"), manifest.update(complete=False)
  json.dump(manifest, open(directory / "manifest.json", "w"))
  with pytest.raises(StoreError, match="incomplete \\(2 of 3 shards"):
    TopKStore(str(directory))
  _write(env, directory, sampling="gumbel", num_shards=3)
  store = TopKStore(str(directory))
  assert os.path.getmtime(store.paths[0]) == kept
  assert [open(p, "rb").read() for p in store.paths] == before  # bit-identical, sampled ids too


@pytest.fixture(scope="module")
def good_store(env, tmp_path_factory):
  directory = tmp_path_factory.mktemp("good") / "s"
  _write(env, directory)
  return directory


def _bent(good_store, tmp_path, edit):
  import shutil

  d = tmp_path / "s"
  shutil.copytree(good_store, d)
  edit(d)
  return str(d)


def _manifest(fn):
  def edit(d):
    m = json.load(open(d / "manifest.json"))
    json.dump(fn(m), open(d / "manifest.json", "w"))

  return edit


def _shard0(d):
  return d / "shard-00000-of-00002.array_record"


def _flip_byte(d):
  raw = bytearray(_shard0(d).read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  _shard0(d).write_bytes(bytes(raw))


@pytest.mark.parametrize(
  "edit,needle",
  [
    (lambda d: (d / "manifest.json").write_text("[1, 2]"), "not an object"),
    (lambda d: (d / "manifest.json").write_text("{oops"), "not a readable JSON manifest"),
    (_manifest(lambda m: {**m, "spec": [1]}), "spec must be an object"),
    (_manifest(lambda m: {**m, "spec": {**m["spec"], "k": "8"}}), "spec.k"),
    (_manifest(lambda m: {**m, "spec": {**m["spec"], "k": 0}}), "k must be >= 1"),
    (_manifest(lambda m: {**m, "spec": {**m["spec"], "temperature": -1.0}}), "temperature"),
    (_manifest(lambda m: {**m, "tokenizer": "x"}), "tokenizer must be an object"),
    (_manifest(lambda m: {**m, "stats": {"examples": "many"}}), "stats.examples"),
    (
      _manifest(lambda m: {**m, "stats": {**m["stats"], "examples": m["stats"]["examples"] + 1}}),
      "the manifest says",
    ),
    (lambda d: _shard0(d).write_bytes(_shard0(d).read_bytes()[:-100]), "truncated or changed"),
    (lambda d: _shard0(d).write_bytes(_shard0(d).read_bytes() + b"\0"), "truncated or changed"),
    (_flip_byte, "sha256 differs"),
    (lambda d: (d / "shard-00000-of-00002.json").write_text("{}"), "shard record unreadable"),
  ],
)
def test_corrupt_store_is_refused_on_open(good_store, tmp_path, edit, needle):
  d = _bent(good_store, tmp_path, edit)
  with pytest.raises(StoreError, match=needle) as e:
    TopKStore(d)
  assert d in str(e.value) and "\n" not in str(e.value)
