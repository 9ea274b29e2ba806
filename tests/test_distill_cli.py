"""experiments/distill.py end to end on tiny models: teacher -> student (offline), online with
on-policy sampling, and the failures a user can make (one line, exit status 2)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "distill.py")
CONFIG = os.path.join(ROOT, "experiments", "configs", "distill.py")
BUNDLED = os.path.join(ROOT, "checkpoints", "gemmax-tiny")


def _module(path, name):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  """A 1-layer gemma2-tiny teacher (vocab 8192) with the bundled tokenizer, and text data."""
  from flax import nnx
  from gemmax.convert import save_hf
  from gemmax.models import ModelConfig, Transformer

  d = tmp_path_factory.mktemp("distill")
  cfg = ModelConfig.preset(
    "gemma2-tiny",
    num_hidden_layers=1,
    vocab_size=8192,
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
  )
  teacher = Transformer(cfg, rngs=nnx.Rngs(0))
  teacher.embed_tokens.embedding.set_value(teacher.embed_tokens.embedding[...] * 10.0)
  save_hf(teacher, str(d / "teacher"))
  for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(os.path.join(BUNDLED, name), d / "teacher")
  with open(os.path.join(ROOT, "data", "trec6", "validation.jsonl")) as f:
    questions = [json.loads(line)["input"] for line in f][:48]
  for name, rows in (
    ("train.jsonl", questions[:40]),
    ("val.jsonl", questions[40:]),
    ("other.jsonl", questions[8:]),
  ):
    with open(d / name, "w") as f:
      f.writelines(json.dumps({"text": q}) + "\n" for q in rows)
  return d


def _config(assets, workdir, **overrides):
  c = _module(CONFIG, "_distill_config").get_config()
  values = {
    "teacher.path": str(assets / "teacher"),
    "data.train": str(assets / "train.jsonl"),
    "data.validation": str(assets / "val.jsonl"),
    "data.format": "text",
    "data.seq_len": 48,
    "data.batch_size": 4,
    "data.eval_batch_size": 4,
    "store.dir": str(assets / "store"),
    "store.k": 8,
    "store.num_shards": 2,
    # the teacher's widths, so the student's init reuses the teacher's compiled ops
    "student.overrides.hidden_size": 64,
    "student.overrides.intermediate_size": 128,
    "student.overrides.num_hidden_layers": 1,
    "student.overrides.head_dim": 16,
    "student.overrides.query_pre_attn_scalar": 24,
    "student.overrides.sliding_window": 8,
    "steps": 3,
    "log_every": 1,
    "eval_every": 3,
    "eval_batches": 1,
    "checkpoint_every": 0,
    "optimizer.warmup_steps": 1,
    "progress": False,
    "workdir": str(workdir),
  }
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  for key, value in values.items():
    *path, last = key.split(".")
    node = c
    for p in path:
      node = node[p]
    node[last] = value
  return c


@pytest.fixture(scope="module")
def cli():
  return _module(SCRIPT, "_distill_cli")


def test_offline_teacher_then_lora_student(assets, tmp_path, cli):
  manifest = cli.run(_config(assets, tmp_path, stage="teacher"))
  assert manifest["complete"] and manifest["spec"]["k"] == 8
  assert manifest["stats"]["examples"] == 40
  again = cli.run(_config(assets, tmp_path, stage="teacher"))  # complete: nothing to redo
  assert again == manifest
  workdir = tmp_path / "student"
  c = _config(
    assets,
    workdir,
    stage="student",
    method="lora",
    **{"lora.rank": 4, "distill.kd_ratio": 0.5, "steps": 2, "eval_every": 2},
  )
  summary = cli.run(c)
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2]
  for key in ("loss", "ce", "kd", "kl", "tokens_per_sec", "learning_rate"):
    assert all(np.isfinite(l[key]) for l in lines), key
  assert lines[-1]["eval_kl"] > 0  # held-out KL measured against the (online) teacher
  assert summary["trainable_params"] < summary["student_params"]  # adapters only, no teacher
  for name in ("adapter/adapter_config.json", "student/config.json", "summary.json"):
    assert os.path.exists(workdir / name), name


ONLINE = {
  "distill.divergence": "jsd",
  "distill.beta": 0.5,
  "onpolicy.fraction": 1.0,
  "onpolicy.max_new_tokens": 6,
  "onpolicy.min_prompt": 3,
  "data.packing": False,
}


@pytest.mark.slow  # ~15 s; on-policy batches and the online losses are also tested by default
def test_online_jsd_with_onpolicy_batches(assets, tmp_path, cli):
  c = _config(
    assets,
    tmp_path / "online",
    stage="online",
    **ONLINE,
    **{"steps": 2, "eval_every": 0, "save_student": False},
  )
  summary = cli.run(c)
  assert summary["onpolicy_batches"] == 2 and np.isfinite(summary["final_loss"])
  assert summary["trainable_params"] == summary["student_params"]  # the teacher is not trained


def test_onpolicy_batch_scores_only_samples(assets, tmp_path, cli):
  from gemmax import data
  from gemmax.distill import onpolicy_batch

  c = _config(assets, tmp_path, stage="online", **ONLINE)  # the online test's shapes: no compile
  tok = data.load_tokenizer(str(assets / "teacher"))
  from gemmax.models import ModelConfig

  student = cli.build_student(c, ModelConfig.from_hf(str(assets / "teacher")))
  batch = next(cli.build.batches(c.data, tok, c.data.train, c.seed))
  out = onpolicy_batch(batch, student, max_new_tokens=6, min_prompt=3, seed=0, tokenizer=tok)
  for r in range(len(batch["input_ids"])):
    n = int(out["segment_ids"][r].sum())
    np.testing.assert_array_equal(out["input_ids"][r, :3], batch["input_ids"][r, :3])  # prompt
    np.testing.assert_array_equal(out["targets"][r, : n - 1], out["input_ids"][r, 1:n])
    mask = out["loss_mask"][r]
    assert not mask[:2].any() and mask[2:n].all() and not mask[n:].any()  # samples only
    assert 3 <= n <= 3 + 6 - 1


def test_mismatches_fail_clearly(assets, tmp_path, cli):
  from gemmax.distill import StoreError
  from gemmax.errors import ConfigError

  cli.run(_config(assets, tmp_path, stage="teacher"))
  # a dataset other than the one the store was written from
  with pytest.raises(StoreError, match="dataset mismatch"):
    cli.run(
      _config(
        assets, tmp_path / "a", stage="student", **{"data.train": str(assets / "other.jsonl")}
      )
    )
  with pytest.raises(StoreError, match="temperature"):
    cli.run(_config(assets, tmp_path / "b", stage="student", **{"distill.temperature": 2.0}))
  # a student tokenizer other than the teacher's
  other = tmp_path / "tok"
  other.mkdir()
  from gemmax.data import load_tokenizer

  spm = open(os.path.join(BUNDLED, "tokenizer.model"), "rb").read()
  from sentencepiece import sentencepiece_model_pb2 as pb

  proto = pb.ModelProto.FromString(spm)
  proto.pieces[-1].piece = "zzzz_other"
  (other / "tokenizer.model").write_bytes(proto.SerializeToString())
  assert load_tokenizer(str(other)).fingerprint != load_tokenizer(BUNDLED).fingerprint
  with pytest.raises(StoreError, match="tokenizer mismatch"):
    cli.run(_config(assets, tmp_path / "c", stage="student", **{"student.tokenizer": str(other)}))
  with pytest.raises(ConfigError, match="student tokenizer"):
    cli.run(_config(assets, tmp_path / "d", stage="online", **{"student.tokenizer": str(other)}))
  # a sequence longer than the teacher's context (gemmax-tiny: 2,048 positions)
  with pytest.raises(ConfigError, match="data.seq_len 5000 is longer than the teacher's"):
    cli.run(_config(assets, tmp_path / "e", stage="teacher", **{"data.seq_len": 5000}))


@pytest.mark.parametrize(
  "override,needle",
  [
    ("--config.store.sampling=nucleus", "store.sampling must be one of topk|gumbel"),
    ("--config.distill.temperature=inf", "distill.temperature must be > 0, got inf"),
    ("--config.onpolicy.fraction=1.5", "onpolicy.fraction must be in [0, 1]"),
    ("--config.store.k=0", "store.k must be > 0"),
    ("--config.distill.beta=-0.5", "distill.beta must be in [0, 1]"),
    ("--config.distill.divergence=kl", "distill.divergence must be"),
    ("--config.stage=compare --config.eval_every=0", "stage compare reports held-out KL"),
    ("", "unknown config key 'distill.kd_rato'"),
  ],
)
def test_config_errors_exit_2_with_one_line(tmp_path, override, needle):
  config = CONFIG
  if not override:  # a config file with a key the script does not know
    config = tmp_path / "typo.py"
    config.write_text(
      f"import importlib.util\n"
      f"s = importlib.util.spec_from_file_location('b', {CONFIG!r})\n"
      f"m = importlib.util.module_from_spec(s); s.loader.exec_module(m)\n"
      f"def get_config():\n  c = m.get_config()\n  c.distill.kd_rato = 1.0\n"
      f"  return c\n"
    )
  r = subprocess.run(
    [
      sys.executable,
      SCRIPT,
      f"--config={config}",
      *(override or "--config.seed=0").split(),
      f"--config.workdir={tmp_path}",
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert r.returncode == 2, r.stderr
  assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_corpus_split_matches_the_pretraining_rule():
  from gemmax.data.chunking import chunk_lines, holdout_split

  lines = [f"line {i} " + "word " * (i % 7) for i in range(300)] + ["x" * 50 + " " + "y" * 50]
  chunks = list(chunk_lines(lines, 60))
  assert all(len(ch) <= 60 for ch in chunks)
  assert " ".join(" ".join(chunks).split()) == " ".join(" ".join(lines).split())  # nothing lost
  train, held = holdout_split(chunks, 10)
  assert held == chunks[9::10] and len(train) + len(held) == len(chunks)


@pytest.mark.slow
def test_compare_stage_offline(assets, tmp_path, cli):
  """The demo's stage on a tiny corpus: teacher store, distilled and CE-only students, report."""
  corpus = tmp_path / "corpus.txt"
  with open(os.path.join(ROOT, "data", "trec6", "validation.jsonl")) as f:
    corpus.write_text("\n".join(json.loads(line)["input"] for line in f))
  c = _config(
    assets,
    tmp_path / "cmp",
    stage="compare",
    **{
      "compare.mode": "offline",
      "compare.corpus": str(corpus),
      "compare.chunk_chars": 120,
      "compare.holdout_every": 10,
      "compare.train_chunks": 40,
      "compare.heldout_chunks": 4,
      "store.dir": "",
      "steps": 4,
      "eval_every": 2,
    },
  )
  summary = cli.run(c)
  for name in ("distilled", "ce_only"):
    assert summary["heldout"][name]["kl"] > 0 and summary["heldout"][name]["perplexity"] > 1
  assert os.path.isfile(tmp_path / "cmp" / "compare.png")
  assert summary["store"]["bytes_per_token"] > 0
  saved = json.load(open(tmp_path / "cmp" / "summary.json"))
  assert saved["kl_reduction"] == summary["kl_reduction"]


def test_compare_without_its_corpus_fails_before_the_workdir(tmp_path):
  work = tmp_path / "run"
  r = subprocess.run(
    [
      sys.executable,
      SCRIPT,
      f"--config={CONFIG}",
      "--config.stage=compare",
      f"--config.compare.corpus={tmp_path / 'no_corpus.txt'}",
      f"--config.workdir={work}",
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
  assert "compare.corpus" in r.stderr and "gutenberg-shakespeare" in r.stderr, r.stderr
  assert not work.exists()
