"""experiments/dpo.py end to end on a tiny HF-format model + tokenizer and preference pairs in tmp:
the metrics it logs, held-out scores before and after, the curves; exact resume after SIGKILL in
the middle of a checkpoint write (tests/crash_runner.py, as for finetune.py); and its bad inputs,
each answered with exit 2, one stderr line naming the culprit and no workdir (docs/reliability.md).
"""

import json
import os
import subprocess
import sys

import pytest

import test_crash_resume as crash
from finetune_assets import ROOT, ROWS, make_assets

SCRIPT = os.path.join(ROOT, "experiments", "dpo.py")
CONFIG = os.path.join(ROOT, "experiments", "configs", "dpo_tiny.py")
RUNNER = os.path.join(ROOT, "tests", "crash_runner.py")
CASES = os.path.join(ROOT, "tests", "dpo_cases.py")


def _pair(r, i):
  wrong = ROWS[(i + 1) % len(ROWS)]["output"]
  return {
    "prompt": r["instruction"] + (" " + r["input"] if r["input"] else ""),
    "chosen": r["output"],
    "rejected": wrong,
  }


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  d = make_assets(str(tmp_path_factory.mktemp("dpo_assets")))
  pairs = [_pair(r, i) for i, r in enumerate(ROWS)]
  for name, rows in (("pairs.jsonl", pairs * 4), ("held_out.jsonl", pairs)):
    with open(os.path.join(d, name), "w") as f:
      f.writelines(json.dumps(p) + "\n" for p in rows)
  return d


def _args(d, workdir, **overrides):
  values = {
    "model.path": os.path.join(d, "model"),
    "data.train": os.path.join(d, "pairs.jsonl"),
    "data.validation": os.path.join(d, "held_out.jsonl"),
    "workdir": str(workdir),
    "data.seq_len": 48,
    "data.batch_size": 2,
    "data.eval_batch_size": 3,
    "steps": 6,
    "log_every": 1,
    "eval_every": 3,
    "eval_batches": 0,
    "checkpoint_every": 0,
    "lora.rank": 4,
    "optimizer.learning_rate": 1e-2,
    "optimizer.warmup_steps": 1,
    "progress": False,
  }
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  return [f"--config={CONFIG}"] + [f"--config.{k}={v}" for k, v in values.items()]


def _env(**extra):
  path = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])  # this checkout's gemmax first
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path, **extra)


def _run(args, timeout=600):
  return subprocess.run(
    [sys.executable, SCRIPT, *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=_env(),
    cwd=ROOT,
  )


@pytest.mark.parametrize("method", ["lora", "full"])
def test_end_to_end(assets, tmp_path, method):
  work = tmp_path / "run"
  r = _run(_args(assets, work, method=method))
  assert r.returncode == 0, r.stderr[-3000:]
  lines = [json.loads(l) for l in open(work / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2, 3, 4, 5, 6]
  for key in (
    "loss",
    "accuracy",
    "chosen_rewards",
    "rejected_rewards",
    "margins",
    "chosen_logps",
    "rejected_logps",
    "logps_accuracy",
    "pairs",
    "tokens_per_sec",
    "learning_rate",
  ):
    assert all(key in l for l in lines), key
  assert all(l["pairs"] == 2 for l in lines)
  assert "eval_margins" in lines[2] and "eval_accuracy" in lines[5]
  summary = json.load(open(work / "summary.json"))
  pref = summary["preference"]
  before, after = pref["before"], pref["after"]
  assert before["pairs"] == after["pairs"] == len(ROWS)
  # at the start the policy is its reference: every reward is 0, the loss log 2
  assert before["margins"] == 0 and before["reward_accuracy"] == 0
  assert abs(before["loss"] - 0.6931) < 1e-3
  assert after["margins"] > 0 and after["loss"] < before["loss"]
  assert os.path.getsize(work / "dpo_curves.png") > 1000
  assert os.path.isdir(work / "adapter") == (method == "lora")
  assert "before training" in r.stdout and "after 6 steps" in r.stdout
  if method == "lora":  # the same command again: nothing to redo; another config: refused
    again = _run(_args(assets, work, method=method))
    assert again.returncode == 0 and "already done: 6 steps" in again.stdout, again.stderr
    other = _run(_args(assets, work, method=method, dpo__beta=0.3))
    assert other.returncode == 2 and "different config (dpo.beta" in other.stderr, other.stderr
    assert json.load(open(work / "summary.json")) == summary


def _crash_args(assets, workdir):
  return _args(
    assets,
    workdir,
    steps=crash.STEPS,
    checkpoint_every=crash.EVERY,
    keep_checkpoints=2,
    eval_every=0,
    data__validation="",
  )


def _start(assets, workdir, pause_step=None):
  env = _env(GEMMAX_TEST_SCRIPT="dpo")
  if pause_step is not None:
    env.update(
      GEMMAX_TEST_PAUSE_SAVE_STEP=str(pause_step), GEMMAX_TEST_PAUSE_MARKER=str(workdir) + ".paused"
    )
  proc = subprocess.Popen(
    [sys.executable, RUNNER, *_crash_args(assets, workdir)],
    env=env,
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  return proc


def test_kill_mid_checkpoint_write_resumes_bit_exact(assets, tmp_path):
  """SIGKILL while checkpoint 4 is being written; the rerun resumes from checkpoint 2 and ends
  bit-identical to an uninterrupted run: parameters, optimizer state, adapter, logged losses."""
  reference = str(tmp_path / "reference")
  status, out, err = crash._finish(_start(assets, reference))
  assert status == 0, err[-3000:]
  workdir = str(tmp_path / "run")
  complete = crash._kill_during_write(_start(assets, workdir, pause_step=4), workdir, 4)
  assert complete == [2]
  status, out, err = crash._finish(_start(assets, workdir))
  assert status == 0, err[-3000:]
  assert crash._resumed_from(out) == 2
  crash._assert_identical(reference, workdir)


# --- bad inputs ---------------------------------------------------------------------------------
GOOD = {"prompt": "Give the opposite.", "chosen": "cold", "rejected": "warm"}
BAD_FILES = {
  "no_rejected.jsonl": [GOOD, {"prompt": "p", "chosen": "a"}],
  "same.jsonl": [GOOD, {"prompt": "p", "chosen": "a", "rejected": "a"}],
}


def _bad_cases(d):
  """name -> (overrides, words the one stderr line must hold); the files of BAD_FILES in d."""
  no_rejected, same = (os.path.join(d, n) for n in BAD_FILES)
  missing = os.path.join(d, "nowhere.jsonl")
  return {
    "pairs_file_missing": ({"data__train": missing}, ["data.train", missing, "does not exist"]),
    "held_out_missing": ({"data__validation": missing}, ["data.validation", "does not exist"]),
    "row_without_rejected": ({"data__train": no_rejected}, [no_rejected, "row 2", "'rejected'"]),
    "chosen_equals_rejected": ({"data__train": same}, [same, "row 2", "identical"]),
    "beta_zero": ({"dpo__beta": 0.0}, ["dpo.beta must be > 0"]),
    "beta_negative": ({"dpo__beta": -0.1}, ["dpo.beta must be > 0", "-0.1"]),
    "unknown_loss_type": ({"dpo__loss_type": "hinge"}, ["dpo.loss_type must be one of", "hinge"]),
    "label_smoothing_half": (
      {"dpo__label_smoothing": 0.5},
      ["dpo.label_smoothing must be in [0, 0.5)", "0.5"],
    ),
    "ipo_with_label_smoothing": (
      {"dpo__loss_type": "ipo", "dpo__label_smoothing": 0.1},
      ["dpo.label_smoothing", "ipo"],
    ),
    "batch_not_multiple_of_grad_accum": (
      {"data__batch_size": 3, "optimizer__grad_accum": 2},
      ["data.batch_size 3", "optimizer.grad_accum 2"],
    ),
    "seq_len_beyond_context": (
      {"data__seq_len": 100_000},
      ["data.seq_len 100000", "max_position_embeddings"],
    ),
    "unknown_key": ({"dpo__bta": 0.1}, ["bta", "Did you mean \"beta\""]),
    "quantize_full": ({"method": "full", "quantize": "nf4"}, ["quantize", "lora or dora"]),
  }


@pytest.fixture(scope="module")
def bad_results(assets, tmp_path_factory):
  """Every bad case run in one process (tests/dpo_cases.py): {name: (status, stderr, workdir)}."""
  d = str(tmp_path_factory.mktemp("dpo_bad"))
  for name, rows in BAD_FILES.items():
    with open(os.path.join(d, name), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  cases = _bad_cases(d)
  argv = {n: _args(assets, os.path.join(d, n, "w"), **o) for n, (o, _) in cases.items()}
  with open(os.path.join(d, "cases.json"), "w") as f:
    json.dump(argv, f)
  out = os.path.join(d, "results.json")
  r = subprocess.run(
    [sys.executable, CASES, os.path.join(d, "cases.json"), out],
    capture_output=True,
    text=True,
    timeout=600,
    env=_env(),
    cwd=ROOT,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.load(open(out))
  return {n: (*results[n][:2], os.path.join(d, n, "w")) for n in cases}, cases


@pytest.mark.parametrize("name", list(_bad_cases("/tmp")))
def test_bad_input_exit_2_one_line_no_workdir(bad_results, name):
  results, cases = bad_results
  status, stderr, workdir = results[name]
  assert status == 2, stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("dpo.py: error: "), stderr
  for word in cases[name][1]:
    assert word in lines[0], (word, lines[0])
  assert not os.path.exists(workdir)
