"""Every example config of the scripts runs from a fresh clone, shortened only by step counts and
row limits (slow: subprocesses; the registry model is fetched by .ci/run before this step).
demo.py and generate.py's default are run by test_finetune_cli / test_evals_cli (grpo_demo.py runs
here, 2 steps); pretrain.py and distill_demo.py build the pinned corpus `gutenberg-shakespeare` on first use (gemmax.data.corpus)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, config, *flags):
  cmd = [
    sys.executable,
    os.path.join(ROOT, "experiments", script),
    f"--config={os.path.join(ROOT, 'experiments', 'configs', config)}",
    "--config.progress=False",
    *flags,
  ]
  p = subprocess.run(
    cmd,
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=900,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert p.returncode == 0, p.stderr[-3000:]
  return p.stdout


@pytest.mark.parametrize("config", ["finetune_lora.py", "demo_tiny.py", "demo_gemma3.py"])
def test_finetune_recipes(tmp_path, config):
  work = tmp_path / "run"
  _run(
    "finetune.py",
    config,
    f"--config.workdir={work}",
    "--config.steps=2",
    "--config.classify.limit=8",
  )
  summary = json.load(open(work / "summary.json"))
  assert summary["steps"] == 2


def test_evaluate_default(tmp_path):
  work = tmp_path / "eval"
  _run(
    "evaluate.py",
    "evaluate.py",
    f"--config.workdir={work}",
    "--config.classification.limit=8",
    "--config.perplexity.max_chars=3000",
  )
  report = json.load(open(work / "eval_report.json"))
  assert report["model"] == "smollm2-135m-instruct"
  assert report["tasks"]["classification"]["num_examples"] == 8
  assert report["tasks"]["perplexity"]["perplexity"] > 1.0


def test_distill_default_teacher_then_student(tmp_path):
  store, work = tmp_path / "store", tmp_path / "student"
  common = [f"--config.store.dir={store}", f"--config.workdir={work}", "--config.steps=2"]
  _run("distill.py", "distill.py", "--config.stage=teacher", *common)
  assert json.load(open(store / "manifest.json"))["complete"]
  _run("distill.py", "distill.py", "--config.stage=student", *common)
  assert os.path.isdir(work / "student")


def test_pretrain_default(tmp_path):
  work, out = tmp_path / "run", tmp_path / "model"
  _run(
    "pretrain.py",
    "pretrain.py",
    f"--config.workdir={work}",
    f"--config.output={out}",
    "--config.steps=2",
    "--config.eval_batches=1",
    "--config.data.heldout_chars=2000",
  )
  report = json.load(open(work / "pretrain_report.json"))
  assert report["steps"] == 2 and report["data"]["heldout_chunks"] > 0
  assert report["perplexity"]["perplexity"] > 1.0
  assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_distill_demo_compare(tmp_path):
  work = tmp_path / "compare"
  _run(
    "distill.py",
    "distill_demo.py",
    f"--config.workdir={work}",
    "--config.steps=2",
    "--config.compare.train_chunks=40",
    "--config.compare.heldout_chunks=4",
  )
  summary = json.load(open(work / "summary.json"))
  assert summary["steps"] == 2 and summary["mode"] == "online"
  assert summary["heldout"]["distilled"]["tokens"] > 0 and (work / "compare.png").is_file()


@pytest.mark.parametrize("config", ["grpo_tiny.py", "grpo_demo.py"])
def test_grpo_recipes(tmp_path, config):
  work = tmp_path / "run"
  _run(
    "grpo.py",
    config,
    f"--config.workdir={work}",
    "--config.steps=2",
    "--config.evaluate.limit=4",
    "--config.prompts_per_step=2",
  )
  summary = json.load(open(work / "summary.json"))
  assert summary["steps"] == 2 and (work / "rewards.png").is_file()
  assert summary["heldout"]["after"]["rows"] == 4
