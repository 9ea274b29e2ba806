"""Every example config of the scripts runs from a fresh clone, shortened only by step counts and
row limits (slow: subprocesses; the registry model is fetched by .ci/run before this step).
demo.py and generate.py's default are run by test_finetune_cli / test_evals_cli; the DPO recipes,
dpo_demo.py (the real model) included, by test_dpo_recipes, grpo_tiny.py and grpo_demo.py by test_grpo_recipes; pretrain.py and
distill_demo.py build the pinned corpus `gutenberg-shakespeare` on first use (gemmax.data.corpus)."""

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


@pytest.mark.parametrize("config", ["dpo_tiny.py", "dpo_demo.py"])
def test_dpo_recipes(tmp_path, config):
  work = tmp_path / "run"
  out = _run(
    "dpo.py",
    config,
    f"--config.workdir={work}",
    "--config.steps=2",
    "--config.eval_batches=1",
  )
  summary = json.load(open(work / "summary.json"))
  assert summary["steps"] == 2 and "before training" in out
  pref = summary["preference"]
  assert pref["before"]["pairs"] == pref["after"]["pairs"] > 0
  assert os.path.isfile(work / "dpo_curves.png")


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


def test_rejection_sampling_best_of_n_then_finetune(tmp_path):
  """Llama 2's rejection-sampling stage: best-of-n answers written as SFT rows, then the
  ordinary finetune job trains on them."""
  stage1, stage2 = tmp_path / "bon", tmp_path / "sft"
  out = _run(
    "best_of_n.py",
    "best_of_n.py",
    f"--config.workdir={stage1}",
    "--config.data.limit=6",
    "--config.n=2",
    "--config.max_new_tokens=4",
    "--config.min_reward=0",
  )
  stats = json.load(open(stage1 / "stats.json"))
  assert stats["prompts"] == 6 and stats["samples"] == 12 and stats["kept"] == 6, out
  rows = [json.loads(line) for line in open(stage1 / "sft.jsonl")]
  assert len(rows) == 6 and all(r["instruction"] and r["input"] for r in rows)
  _run(
    "finetune.py",
    "rejection_sampling.py",
    f"--config.workdir={stage2}",
    f"--config.data.train={stage1 / 'sft.jsonl'}",
    "--config.steps=2",
  )
  assert json.load(open(stage2 / "summary.json"))["steps"] == 2


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
