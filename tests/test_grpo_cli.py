"""experiments/grpo.py end to end on a tiny model: what it logs and writes, exact resume after
SIGKILL, and its bad inputs (exit status 2, one stderr line naming the culprit, no workdir).
The script's main runs in this process (tests/finetune_assets.invoke) except for the crash test,
which runs tests/crash_runner.py with GEMMAX_TEST_SCRIPT=grpo."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from finetune_assets import ROOT, ROWS, invoke, make_assets

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import grpo  # noqa: E402

CONFIG = os.path.join(ROOT, "experiments", "configs", "grpo_tiny.py")
RUNNER = os.path.join(ROOT, "tests", "crash_runner.py")
REWARDS = "grpo_test_rewards:length,gemmax.evals.rewards:exact_match"


@pytest.fixture(scope="module")
def d(tmp_path_factory):
  d = make_assets(str(tmp_path_factory.mktemp("grpo_cli")))
  with open(os.path.join(d, "grpo_test_rewards.py"), "w") as f:
    f.write("def length(prompt, completion, row):\n  return float(len(completion.split()))\n")
  with open(os.path.join(d, "grpo_boom.py"), "w") as f:
    f.write("raise RuntimeError('boom at import')\n")
  with open(os.path.join(d, "bad_row.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in ROWS[:2] + [{"instruction": "x", "input": ""}])
  sys.path.insert(0, d)
  return d


def _values(d, workdir, **overrides):
  values = {
    "model.path": os.path.join(d, "model"),
    "data.train": os.path.join(d, "train.jsonl"),
    "evaluate.file": os.path.join(d, "train.jsonl"),
    "evaluate.limit": 4,
    "evaluate.max_new_tokens": 3,
    "rewards.functions": REWARDS,
    "rewards.weights": "0.1,1",
    "num_generations": 3,
    "prompts_per_step": 2,
    "max_completion_length": 4,
    "lora.rank": 4,
    "steps": 3,
    "log_every": 1,
    "checkpoint_every": 0,
    "progress": False,
    "workdir": str(workdir),
  }
  values.update({k.replace("__", "."): v for k, v in overrides.items()})
  return values


def _argv(d, workdir, **overrides):
  return [f"--config={CONFIG}"] + [
    f"--config.{k}={v}" for k, v in _values(d, workdir, **overrides).items()
  ]


def test_tiny_run_logs_rewards_kl_clipping_and_speeds(d, tmp_path):
  work = tmp_path / "run"
  status, err, out = invoke(grpo.main, _argv(d, work, checkpoint_every=3), "grpo.py")
  assert status == 0, err
  lines = [json.loads(line) for line in open(work / "metrics.jsonl")]
  assert [m["step"] for m in lines] == [1, 2, 3]
  for key in (
    "loss",
    "kl",
    "clip_low",
    "clip_high",
    "clip_region",
    "completion_length",
    "reward",
    "reward_std",
    "reward_length",
    "reward_length_std",
    "reward_exact_match",
    "reward_exact_match_std",
    "sampling_tokens_per_sec",
    "tokens_per_sec",
  ):
    assert all(np.isfinite(m[key]) for m in lines), key
  assert all(m["train_tokens_per_sec"] > 0 for m in lines[1:])  # measured from step 2 on
  assert all(0 < m["completion_length"] <= 4 for m in lines)
  assert any(m["reward_length_std"] > 0 for m in lines)  # groups with a signal
  assert all(
    m["reward"] == pytest.approx(0.1 * m["reward_length"] + m["reward_exact_match"]) for m in lines
  )
  summary = json.load(open(work / "summary.json"))
  assert summary["steps"] == 3 and summary["reward_last"] == lines[-1]["reward"]
  held = summary["heldout"]
  assert held["before"]["rows"] == held["after"]["rows"] == 4
  for name in ("rewards.png", "loss_curve.png", "adapter/adapter_model.safetensors"):
    assert (work / name).is_file(), name
  assert "held-out greedy exact match" in out
  # the same command again finds the finished run and does not train again
  status, err, out = invoke(grpo.main, _argv(d, work, checkpoint_every=3), "grpo.py")
  assert status == 0 and "resumed from step 3" in out, err


def _p(name):
  return lambda d: os.path.join(d, name)


CASES = [
  (
    "reward_module_missing",
    {"rewards.functions": "nosuch:fn", "rewards.weights": ""},
    ["nosuch:fn", "cannot import"],
  ),
  (
    "reward_function_missing",
    {"rewards.functions": "grpo_test_rewards:nope", "rewards.weights": ""},
    ["grpo_test_rewards", "no function nope"],
  ),
  (
    "reward_module_raises",
    {"rewards.functions": "grpo_boom:fn", "rewards.weights": ""},
    ["grpo_boom:fn", "RuntimeError", "boom at import"],
  ),
  (
    "reward_not_module_function",
    {"rewards.functions": "length", "rewards.weights": ""},
    ["'length'", "module:function"],
  ),
  ("weights_count", {"rewards.weights": "1,2,3"}, ["2 reward functions but 3 weights"]),
  ("weights_not_numbers", {"rewards.weights": "one,two"}, ["rewards.weights", "numbers"]),
  ("num_generations_one", {"num_generations": 1}, ["num_generations must be >= 2", "1"]),
  ("num_generations_zero", {"num_generations": 0}, ["num_generations must be > 0"]),
  ("prompts_per_step_zero", {"prompts_per_step": 0}, ["prompts_per_step must be > 0"]),
  ("beta_negative", {"grpo.beta": -0.1}, ["grpo.beta must be >= 0", "-0.1"]),
  ("epsilon_above_one", {"grpo.epsilon": 1.5}, ["grpo.epsilon must be in (0, 1)", "1.5"]),
  ("epsilon_high_negative", {"grpo.epsilon_high": -0.2}, ["grpo.epsilon_high"]),
  ("loss_type_unknown", {"grpo.loss_type": "ppo"}, ["grpo.loss_type", "ppo"]),
  ("scale_rewards_unknown", {"grpo.scale_rewards": "std"}, ["grpo.scale_rewards", "std"]),
  ("full_with_beta", {"method": "full"}, ["method full", "grpo.beta 0.04", "lora"]),
  ("temperature_zero", {"temperature": 0.0}, ["temperature must be > 0"]),
  ("top_p_above_one", {"top_p": 1.5}, ["top_p must be in (0, 1]"]),
  ("max_completion_length_zero", {"max_completion_length": 0}, ["max_completion_length"]),
  ("prompts_missing", {"data.train": _p("nope.jsonl")}, ["data.train", "nope.jsonl", "not exist"]),
  ("prompts_bad_row", {"data.train": _p("bad_row.jsonl")}, ["bad_row.jsonl", "row 3", "output"]),
  ("prompt_format_unknown", {"data.format": "text"}, ["data.format", "text"]),
  ("more_prompts_than_rows", {"prompts_per_step": 999}, ["prompts_per_step 999"]),
  ("evaluate_file_missing", {"evaluate.file": _p("none.jsonl")}, ["evaluate.file", "none.jsonl"]),
  ("model_missing", {"model.path": _p("no_model")}, ["model.path", "no_model"]),
]


@pytest.mark.parametrize("overrides,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(d, tmp_path, overrides, needles):
  overrides = {k: v(d) if callable(v) else v for k, v in overrides.items()}
  workdir = tmp_path / "run"
  argv = _argv(d, workdir, **{k.replace(".", "__"): v for k, v in overrides.items()})
  status, err, _ = invoke(grpo.main, argv, "grpo.py")
  lines = err.strip().splitlines()
  assert status == 2, err
  assert len(lines) == 1 and lines[0].startswith("grpo.py: error: "), err
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  assert not os.path.exists(workdir)  # nothing written


# --- exact resume after SIGKILL ------------------------------------------------------------------
def _run(d, workdir, env, pause=None):
  env = dict(
    env,
    GEMMAX_TEST_SCRIPT="grpo",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), ROOT, d]),
  )
  if pause:
    env.update(GEMMAX_TEST_PAUSE_SAVE_STEP=str(pause), GEMMAX_TEST_PAUSE_MARKER=f"{workdir}.paused")
  argv = _argv(d, workdir, steps=6, checkpoint_every=2, evaluate__file="")
  return subprocess.Popen(
    [sys.executable, RUNNER, *argv],
    env=env,
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def test_sigkill_mid_checkpoint_then_resume_is_exact(d, tmp_path):
  import time

  from gemmax.train import read_jsonl

  cache = tmp_path / "jax_cache"
  env = dict(
    os.environ,
    JAX_COMPILATION_CACHE_DIR=str(cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  ref, crashed = tmp_path / "reference", tmp_path / "crashed"
  p = _run(d, ref, env)
  _, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  p = _run(d, crashed, env, pause=4)  # SIGKILL while checkpoint 4 is being written
  marker = f"{crashed}.paused"
  end = time.time() + 600
  while not os.path.exists(marker):
    assert p.poll() is None, p.communicate()[1][-3000:]
    assert time.time() < end
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  p = _run(d, crashed, env)
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  assert "resumed from step 2" in out  # the half-written checkpoint 4 is never restored
  a = read_jsonl(str(ref / "metrics.jsonl"))
  b = read_jsonl(str(crashed / "metrics.jsonl"))
  assert [m["step"] for m in b] == list(range(1, 7))
  for key in ("loss", "kl", "reward", "reward_length", "completion_length", "grad_norm"):
    assert [m[key] for m in a] == [m[key] for m in b], key
  adapter = "adapter/adapter_model.safetensors"
  assert (ref / adapter).read_bytes() == (crashed / adapter).read_bytes()
