"""experiments/evaluate.py and experiments/generate.py end to end, in subprocesses, on a tiny
Gemma 2 saved to tmp with a SentencePiece tokenizer trained here."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hf_models import gemma2_config, make_hf_model, save_hf_model
from test_data_fixtures import train_spm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tiny"))
  train_spm(d, vocab_size=640, n_chars=30_000)
  save_hf_model(make_hf_model(gemma2_config(vocab_size=640), seed=5), d)
  with open(os.path.join(d, "cls.jsonl"), "w") as f:
    for i, (t, l) in enumerate(
      [
        ("the cat sat", "animal"),
        ("a red car", "vehicle"),
        ("the dog ran", "animal"),
        ("a fast bus", "vehicle"),
        ("a bird sang", "animal"),
      ]
    ):
      f.write(json.dumps({"text": t, "label": l}) + "\n")
  with open(os.path.join(d, "text.txt"), "w") as f:
    f.write("The quick brown fox jumps over the lazy dog. " * 12)
  return d


def _run(script, *flags, status=0):
  """stdout of `python experiments/<script> --config experiments/configs/<script> *flags`; with
  status=2, the one error line instead."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [
    sys.executable,
    os.path.join(ROOT, "experiments", script),
    "--config",
    os.path.join(ROOT, "experiments", "configs", script),
    *flags,
  ]
  p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert p.returncode == status, p.stderr[-3000:]
  if status == 0:
    return p.stdout
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), p.stderr[-3000:]
  return lines[0]


@pytest.mark.slow
def test_generate_one_shot(tiny_dir):
  from gemmax.convert import load_hf
  from gemmax.data import load_tokenizer, render_chat
  from gemmax.sampling import Sampler

  out = _run(
    "generate.py",
    f"--config.model.path={tiny_dir}",
    "--config.prompt=Hello there",
    "--config.temperature=0",
    "--config.max_new_tokens=12",
    "--config.max_len=128",
  )
  tok = load_tokenizer(tiny_dir)
  ids = tok.encode(
    render_chat([{"role": "user", "content": "Hello there"}], "gemma", add_generation_prompt=True),
    add_bos=False,
  )
  want = Sampler(load_hf(tiny_dir), tok, max_len=128).generate([ids], 12, stop=["<end_of_turn>"])
  assert want.text[0] and want.text[0] in out


@pytest.mark.slow
def test_evaluate_end_to_end(tiny_dir, tmp_path):
  from gemmax import evals
  from gemmax.convert import load_hf
  from gemmax.data import load_tokenizer

  work = str(tmp_path / "eval")
  out = _run(
    "evaluate.py",
    f"--config.model.path={tiny_dir}",
    f"--config.workdir={work}",
    "--config.tasks=classification,perplexity",
    f"--config.classification.file={tiny_dir}/cls.jsonl",
    "--config.classification.format=text_label",
    "--config.classification.template=Text: {text}\nTopic:",
    "--config.classification.label_template= {label}",
    f"--config.perplexity.file={tiny_dir}/text.txt",
    "--config.perplexity.window=64",
    "--config.perplexity.stride=32",
    "--config.progress=False",
  )
  assert "macro-F1" in out and "perplexity" in out
  report = json.load(open(os.path.join(work, "eval_report.json")))
  cls, ppl = report["tasks"]["classification"], report["tasks"]["perplexity"]
  assert os.path.isfile(os.path.join(work, "confusion_matrix.png"))
  model, tok = load_hf(tiny_dir), load_tokenizer(tiny_dir)
  texts = ["the cat sat", "a red car", "the dog ran", "a fast bus", "a bird sang"]
  gold = ["animal", "vehicle", "animal", "vehicle", "animal"]
  want = evals.evaluate_classification(
    model,
    tok,
    texts,
    gold,
    template="Text: {text}\nTopic:",
    label_template=" {label}",
    progress=False,
  )
  assert cls["predictions"] == want["predictions"] and cls["accuracy"] == want["accuracy"]
  assert np.isclose(cls["macro_f1"], want["macro_f1"])
  text = open(os.path.join(tiny_dir, "text.txt")).read()
  want = evals.perplexity(model, tok, text, window=64, stride=32, progress=False)
  assert ppl["perplexity"] == pytest.approx(want["perplexity"], rel=1e-5)


@pytest.mark.slow
def test_evaluate_with_adapter_workdir(tiny_dir, tmp_path):
  peft = pytest.importorskip("gemmax.peft")
  from flax import nnx
  from gemmax import evals
  from gemmax.convert import load_hf
  from gemmax.data import load_tokenizer

  model = load_hf(tiny_dir)
  peft.apply(model, method="lora", rank=4, alpha=8, rngs=nnx.Rngs(1))
  # non-zero B so that the adapter changes the outputs
  for path, var in nnx.state(model, nnx.Param).flat_state():
    if "lora_b" in "/".join(map(str, path)):
      var.set_value(0.05 * np.random.RandomState(0).randn(*var.shape).astype(np.float32))
  work = tmp_path / "run"
  peft.save_adapter(model, str(work / "adapter"))
  (work / "config.json").write_text(json.dumps({"model": {"path": tiny_dir}}))
  out_dir = str(tmp_path / "eval")
  _run(
    "evaluate.py",
    "--config.model.path=",
    f"--config.model.adapter={work}",
    f"--config.model.tokenizer={tiny_dir}",
    f"--config.workdir={out_dir}",
    "--config.tasks=perplexity",
    f"--config.perplexity.file={tiny_dir}/text.txt",
    "--config.perplexity.window=64",
    "--config.progress=False",
  )
  got = json.load(open(os.path.join(out_dir, "eval_report.json")))["tasks"]["perplexity"]
  text = open(os.path.join(tiny_dir, "text.txt")).read()
  want = evals.perplexity(model, load_tokenizer(tiny_dir), text, window=64, progress=False)
  base = evals.perplexity(
    load_hf(tiny_dir), load_tokenizer(tiny_dir), text, window=64, progress=False
  )
  assert got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-5)
  assert got["perplexity"] != pytest.approx(base["perplexity"], rel=1e-4)


@pytest.mark.slow
def test_generate_chats_with_the_registry_model():
  """The default chat model is the registry's SmolLM2-135M-Instruct, in its own template."""
  out = _run(
    "generate.py",
    "--config.prompt=What is the capital of France?",
    "--config.temperature=0",
    "--config.max_new_tokens=24",
  )
  assert "Paris" in out


@pytest.mark.slow
def test_evaluate_a_gguf_file_and_a_finetune_workdir(tmp_path):
  """evaluate.py takes a .gguf file, and a finetune workdir (base + adapter, prompted the way
  that run trained)."""
  from gemmax.fetch import resolve

  rows = str(tmp_path / "rows.jsonl")
  with open(os.path.join(ROOT, "data", "trec6", "test.jsonl")) as f, open(rows, "w") as g:
    g.writelines(f.readlines()[:12])
  common = [
    "--config.tasks=classification,exact_match",
    f"--config.classification.file={rows}",
    f"--config.exact_match.file={rows}",
    "--config.progress=False",
    "--config.classification.prompt=model",
    "--config.model.dtype=bfloat16",
  ]
  out = _run(
    "evaluate.py",
    f"--config.model.path={resolve('smollm2-135m-instruct')}",
    f"--config.workdir={tmp_path / 'e1'}",
    *common,
  )
  assert "macro-F1" in out and "exact match" in out
  work = tmp_path / "run"
  r = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "experiments", "finetune.py"),
      f"--config={os.path.join(ROOT, 'experiments', 'configs', 'demo.py')}",
      f"--config.workdir={work}",
      "--config.steps=2",
      "--config.eval_every=0",
      "--config.checkpoint_every=0",
      "--config.progress=False",
      "--config.classify.file=",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=900,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert r.returncode == 0, r.stderr[-3000:]
  out = _run(
    "evaluate.py",
    f"--config.model.path={work}",
    f"--config.workdir={tmp_path / 'e2'}",
    *common[:-2],
    "--config.model.dtype=bfloat16",
  )
  report = json.load(open(tmp_path / "e2" / "eval_report.json"))
  assert report["model"] == "smollm2-135m-instruct"
  assert report["tasks"]["classification"]["num_examples"] == 12


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["missing", "not_utf8"])
def test_failed_evaluation_leaves_the_earlier_outputs(tiny_dir, tmp_path, bad):
  """A perplexity file that is missing (caught before the model loads) or not UTF-8 (caught
  after classification ran): exit 2, one line naming it, the earlier report and plot untouched."""
  work = tmp_path / "eval"
  work.mkdir()
  (work / "eval_report.json").write_text('{"earlier": true}')
  (work / "confusion_matrix.png").write_bytes(b"earlier plot")
  ppl = tmp_path / "ppl.txt"
  if bad == "not_utf8":
    ppl.write_bytes(b"caf\xe9 " * 50)
  line = _run(
    "evaluate.py",
    f"--config.model.path={tiny_dir}",
    f"--config.workdir={work}",
    "--config.tasks=classification,perplexity",
    f"--config.classification.file={tiny_dir}/cls.jsonl",
    "--config.classification.format=text_label",
    f"--config.perplexity.file={ppl}",
    "--config.progress=False",
    status=2,
  )
  assert "perplexity.file" in line and str(ppl) in line, line
  assert sorted(os.listdir(work)) == ["confusion_matrix.png", "eval_report.json"]
  assert (work / "eval_report.json").read_text() == '{"earlier": true}'
  assert (work / "confusion_matrix.png").read_bytes() == b"earlier plot"


@pytest.mark.slow
def test_evaluation_with_a_missing_file_creates_no_workdir(tmp_path):
  work = tmp_path / "eval"
  line = _run(
    "evaluate.py",
    f"--config.workdir={work}",
    "--config.tasks=exact_match",
    f"--config.exact_match.file={tmp_path}/nope.jsonl",
    status=2,
  )
  assert "exact_match.file" in line and "nope.jsonl" in line, line
  assert not work.exists()
