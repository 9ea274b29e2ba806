"""experiments/finetune.py end to end: a tiny HF-format model + tokenizer + Alpaca JSONL in tmp."""

import json
import os
import subprocess
import sys

import pytest

from finetune_assets import CONFIG, ROOT, ROWS, write_tokenizer  # shared with test_bad_inputs

SCRIPT = os.path.join(ROOT, "experiments", "finetune.py")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  from flax import nnx
  from gemmax.convert import save_hf
  from gemmax.models import ModelConfig, Transformer

  d = tmp_path_factory.mktemp("finetune")
  model_dir = d / "model"
  cfg = ModelConfig.preset("gemma2-tiny", num_hidden_layers=2, vocab_size=512)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  # Larger (tied) embeddings than the 0.02 init: logits can then grow enough through the
  # adapters alone for the loss to fall clearly within 20 steps.
  model.embed_tokens.embedding.set_value(model.embed_tokens.embedding[...] * 20.0)
  save_hf(model, str(model_dir))
  from gemmax.data import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT

  # Train the tokenizer on the prompt templates too, so an example fits in a short sequence.
  texts = [" ".join(r.values()) for r in ROWS] + [ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT]
  write_tokenizer(str(model_dir), texts * 4)
  for name, rows in (("train.jsonl", ROWS * 4), ("val.jsonl", ROWS[:4])):
    with open(d / name, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  return d


def _run(assets, workdir, *overrides, timeout=600, env=None):
  args = [
    sys.executable,
    SCRIPT,
    f"--config={CONFIG}",
    f"--config.model.path={assets / 'model'}",
    f"--config.data.train={assets / 'train.jsonl'}",
    f"--config.data.validation={assets / 'val.jsonl'}",
    f"--config.workdir={workdir}",
    "--config.model.dtype=float32",
    "--config.data.seq_len=128",
    "--config.data.batch_size=4",
    "--config.data.eval_batch_size=1",
    "--config.steps=20",
    "--config.log_every=5",
    "--config.eval_every=10",
    "--config.eval_batches=2",
    "--config.checkpoint_every=10",
    "--config.optimizer.learning_rate=1e-2",
    "--config.optimizer.warmup_steps=2",
    "--config.lora.rank=4",
    "--config.lora.dropout=0.0",
    "--config.progress=False",
    *overrides,
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **(env or {}))
  return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _check_run(workdir, adapter: bool):
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [5, 10, 15, 20]
  for key in ("step", "loss", "tokens_per_sec", "learning_rate"):
    assert all(key in l for l in lines), key
  assert "eval_loss" in lines[1] and "eval_loss" in lines[3]
  summary = json.load(open(workdir / "summary.json"))
  # A repeated tiny dataset is learned: the loss falls well below where it started.
  assert summary["final_loss"] < 0.7 * summary["first_loss"], summary
  assert os.path.getsize(workdir / "loss_curve.png") > 1000
  assert os.listdir(workdir / "tensorboard")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
  if adapter:
    assert sorted(os.listdir(workdir / "adapter")) == [
      "adapter_config.json",
      "adapter_model.safetensors",
    ]
  return summary


@pytest.mark.slow
def test_lora_end_to_end(assets, tmp_path):
  r = _run(assets, tmp_path / "run")
  assert r.returncode == 0, r.stderr[-3000:]
  summary = _check_run(tmp_path / "run", adapter=True)
  assert summary["trainable_params"] < summary["total_params"] / 5


@pytest.mark.slow
@pytest.mark.parametrize(
  "method,quantize", [("full", None), ("dora", None), ("lora", "nf4"), ("dora", "nf4")]
)
def test_methods_end_to_end(assets, tmp_path, method, quantize):
  extra = [f"--config.method={method}"] + ([f"--config.quantize={quantize}"] if quantize else [])
  if method == "full":
    extra.append("--config.save_merged=True")
  r = _run(assets, tmp_path / "run", *extra)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = _check_run(tmp_path / "run", adapter=method != "full")
  if method == "full":
    assert summary["trainable_params"] == summary["total_params"]
    assert os.path.isfile(tmp_path / "run" / "merged" / "config.json")


@pytest.mark.parametrize(
  "override,needle",
  [
    ("--config.optimzer.learning_rate=1e-3", "optimzer"),
    ("--config.lora.rnak=4", "rnak"),
  ],
)
def test_mistyped_override_fails_naming_key(tmp_path, override, needle):
  r = subprocess.run(
    [sys.executable, SCRIPT, f"--config={CONFIG}", override, f"--config.workdir={tmp_path / 'w'}"],
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    cwd=ROOT,
  )
  assert r.returncode != 0
  assert needle in r.stderr
  assert not os.path.exists(tmp_path / "w")  # failed before any work


def test_mistyped_key_in_config_file_fails(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text(
    f"import sys\nsys.path.insert(0, {os.path.dirname(CONFIG)!r})\n"
    "from finetune_lora import get_config as base\n"
    "def get_config():\n  c = base()\n  c.optimizer.learnin_rate = 1.0\n  return c\n"
  )
  r = subprocess.run(
    [sys.executable, SCRIPT, f"--config={bad}"],
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    cwd=ROOT,
  )
  assert r.returncode == 2 and "optimizer.learnin_rate" in r.stderr


@pytest.mark.parametrize(
  "override,needle",
  [
    ("--config.optimizer.learning_rate=0", "learning_rate must be > 0"),
    ("--config.steps=-1", "steps must be > 0"),
    ("--config.lora.rank=0", "lora.rank must be > 0"),
    ("--config.method=qlora", "method must be"),
  ],
)
def test_invalid_values_exit_2_with_one_line(tmp_path, override, needle):
  r = subprocess.run(
    [sys.executable, SCRIPT, f"--config={CONFIG}", override],
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    cwd=ROOT,
  )
  assert r.returncode == 2, r.stderr
  assert needle in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_sharded_lora_with_classification(assets, tmp_path):
  """4 simulated devices, mesh data=2 x fsdp=2: trains, and reports zero-shot and fine-tuned
  label-likelihood accuracy plus the majority baseline in summary.json."""
  env = dict(XLA_FLAGS="--xla_force_host_platform_device_count=4")
  r = _run(
    assets,
    tmp_path / "run",
    "--config.mesh.fsdp=2",
    "--config.checkpoint_every=0",
    f"--config.classify.file={assets / 'val.jsonl'}",
    "--config.steps=10",
    "--config.eval_every=5",
    "--config.data.eval_batch_size=4",
    env=env,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(tmp_path / "run" / "summary.json"))
  assert len(summary["devices"]) == 4
  assert summary["final_loss"] < summary["first_loss"]
  cls = summary["classification"]
  assert cls["baseline"]["label"] in {r["output"] for r in ROWS}
  for stage in ("zero_shot", "fine_tuned"):
    assert 0.0 <= cls[stage]["accuracy"] <= 1.0 and cls[stage]["num_examples"] == 4
  assert "fine-tuned" in r.stdout and "zero-shot" in r.stdout
  assert os.path.getsize(tmp_path / "run" / "confusion_matrix.png") > 1000


DEMO = os.path.join(ROOT, "experiments", "configs", "demo.py")
DEMO_TINY = os.path.join(ROOT, "experiments", "configs", "demo_tiny.py")


@pytest.mark.parametrize(
  "variant",
  [
    "lora",
    pytest.param("dora", marks=pytest.mark.slow),
    pytest.param("nf4", marks=pytest.mark.slow),
  ],
)
def test_demo_config_on_bundled_model(tmp_path, variant):
  """The main job's path on the bundled model, shortened: experiments/configs/demo_tiny.py on
  checkpoints/gemmax-tiny and data/trec6 runs as configured (only steps, classification rows and
  outputs cut down)."""
  extra = {"dora": ["--config.method=dora"], "nf4": ["--config.quantize=nf4"]}.get(variant, [])
  args = [
    sys.executable,
    SCRIPT,
    f"--config={DEMO_TINY}",
    f"--config.workdir={tmp_path / 'demo'}",
    "--config.steps=3",
    "--config.log_every=1",
    "--config.eval_every=3",
    "--config.eval_batches=1",
    "--config.checkpoint_every=0",
    "--config.classify.limit=12",
    "--config.progress=False",
    *extra,
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(tmp_path / "demo" / "summary.json"))
  cls = summary["classification"]
  assert cls["baseline"]["label"] == "entity"  # the training file's majority class
  for stage in ("zero_shot", "fine_tuned"):
    assert cls[stage]["num_examples"] == 12 and 0.0 <= cls[stage]["accuracy"] <= 1.0
  assert "majority baseline" in r.stdout and "fine-tuned" in r.stdout
  assert sorted(os.listdir(tmp_path / "demo" / "adapter")) == [
    "adapter_config.json",
    "adapter_model.safetensors",
  ]
  assert os.path.getsize(tmp_path / "demo" / "loss_curve.png") > 1000


@pytest.mark.slow
def test_main_job_on_the_real_model(tmp_path):
  """The README's main job, shortened: experiments/configs/demo.py LoRA-fine-tunes the registry's
  SmolLM2-135M-Instruct in its own chat template, answers by label likelihood and by generation,
  and exports the merged model as GGUF."""
  args = [
    sys.executable,
    SCRIPT,
    f"--config={DEMO}",
    f"--config.workdir={tmp_path / 'demo'}",
    "--config.steps=4",
    "--config.log_every=2",
    "--config.eval_every=4",
    "--config.eval_batches=1",
    "--config.checkpoint_every=0",
    "--config.classify.limit=16",
    "--config.progress=False",
    "--config.export.gguf=q8_0",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  r = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(tmp_path / "demo" / "summary.json"))
  cls = summary["classification"]
  assert cls["baseline"]["label"] == "entity"
  gen = cls["fine_tuned"]["generated"]
  assert gen["num_examples"] == 16 and 0.0 <= gen["exact_match"] <= 1.0
  for word in (
    "majority baseline",
    "zero-shot",
    "fine-tuned",
    "macro-F1",
    "confusion matrix",
    "by generation",
  ):
    assert word in r.stdout, word
  assert summary["final_loss"] < summary["first_loss"]
  from gemmax.convert import load_gguf

  assert load_gguf(summary["gguf"]).config.num_hidden_layers == 30
