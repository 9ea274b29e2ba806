"""Every example config of the scripts runs from a fresh clone, shortened only by step counts and
row limits (slow: subprocesses; the registry model is fetched by .ci/run before this step).
demo.py and generate.py's default are run by test_finetune_cli / test_evals_cli; pretrain.py and
distill_demo.py read data/corpus/pretrain.txt, which experiments/prepare_data.py builds."""

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
