"""The catalogue of bad inputs (docs/reliability.md): each is answered by one line on stderr,
`finetune.py: error: <message>` naming the file / key / tensor / row, exit status 2, no traceback,
and no workdir created or changed. The CLI's main runs in this process (tests/finetune_assets.py),
as `python experiments/finetune.py ...` would; each case fails before any compilation.
"""

import contextlib
import io
import json
import os
import shutil
import sys

import pytest

from finetune_assets import CONFIG, ROOT, base_args, invoke, make_assets, run_config

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import finetune  # noqa: E402

MISSING = "model.layers.1.mlp.up_proj.weight"


def _copy_model(d, name, edit):
  dst = os.path.join(d, name)
  shutil.copytree(os.path.join(d, "model"), dst)
  edit(dst)
  return dst


def _drop_or_bend_tensor(bend):
  def edit(path):
    from gemmax.io.safetensors import SafetensorsFile, save_file

    st = SafetensorsFile(os.path.join(path, "model.safetensors"))
    tensors = {k: st.get(k) for k in st.keys()}
    if bend:
      tensors[MISSING] = tensors[MISSING][:, :7]
    else:
      del tensors[MISSING]
    save_file(tensors, os.path.join(path, "model.safetensors"))

  return edit


def _corrupt_weights(how):
  """Edits model.safetensors in place the ways issue 30 found accepted: cut in half, missing its
  last byte, offsets past the end, a dtype rewritten in the header, a NaN in one tensor."""

  def edit(path):
    import struct

    import numpy as np

    from gemmax.io.safetensors import SafetensorsFile, save_file

    file = os.path.join(path, "model.safetensors")
    with open(file, "rb") as f:
      raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    if how == "half":
      raw = raw[: len(raw) // 2]
    elif how == "last_byte":
      raw = raw[:-1]
    elif how in ("past_end", "dtype"):
      if how == "past_end":
        b, e = header[MISSING]["data_offsets"]
        header[MISSING]["data_offsets"] = [b + 4096, e + 4096]
      else:
        header[MISSING]["dtype"] = "F16"
      blob = json.dumps(header).encode()
      raw = struct.pack("<Q", len(blob)) + blob + data
    elif how == "nan":
      st = SafetensorsFile(file)
      tensors = {k: st.get(k) for k in st.keys()}
      tensors[MISSING] = tensors[MISSING].copy()
      tensors[MISSING][0, 0] = np.nan
      save_file(tensors, file)
      return
    _write(file, raw)

  return edit


def _edit_config(**changes):
  def edit(path):
    with open(os.path.join(path, "config.json")) as f:
      cfg = json.load(f)
    cfg.update(changes)
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump(cfg, f)

  return edit


def _write(path, data: bytes):
  with open(path, "wb") as f:
    f.write(data)
  return path


def _rows(path, rows):
  return _write(
    path, b"".join(r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n" for r in rows)
  )


def _config_file(path, body):
  return _write(
    path,
    (
      f"import sys\nsys.path.insert(0, {os.path.dirname(CONFIG)!r})\n"
      "from ml_collections import config_dict\n"
      "from finetune_lora import get_config as base\n"
      f"def get_config():\n  c = base()\n{body}  return c\n"
    ).encode(),
  )


@pytest.fixture(scope="module")
def d(tmp_path_factory):
  d = make_assets(str(tmp_path_factory.mktemp("bad_inputs")))
  good = {"instruction": "Say hi.", "input": "", "output": "hi"}
  _copy_model(d, "missing_tensor", _drop_or_bend_tensor(bend=False))
  _copy_model(d, "wrong_shape", _drop_or_bend_tensor(bend=True))
  _copy_model(
    d, "mistral", _edit_config(architectures=["MistralForCausalLM"], model_type="mistral")
  )
  _copy_model(d, "kv_heads_zero", _edit_config(num_key_value_heads=0))
  _copy_model(d, "eos_string", _edit_config(eos_token_id="</s>"))
  _copy_model(d, "bad_json", lambda p: _write(os.path.join(p, "config.json"), b"{not json"))
  _copy_model(d, "truncated", lambda p: _write(os.path.join(p, "model.safetensors"), b"\x10\x00"))
  for how in ("half", "last_byte", "past_end", "dtype", "nan"):
    _copy_model(d, f"weights_{how}", _corrupt_weights(how))
  _copy_model(d, "no_tokenizer", lambda p: os.remove(os.path.join(p, "tokenizer.json")))
  _copy_model(d, "bad_tokenizer", lambda p: _write(os.path.join(p, "tokenizer.json"), b"{\"x\""))
  _write(os.path.join(d, "empty.jsonl"), b"")
  _write(os.path.join(d, "binary.jsonl"), bytes(range(256)) * 4)
  os.makedirs(os.path.join(d, "a_directory.jsonl"))
  _rows(os.path.join(d, "missing_field.jsonl"), [good, good, {"instruction": "x", "input": ""}])
  _rows(os.path.join(d, "non_utf8.jsonl"), [good, b'{"instruction": "caf\xe9", "output": "x"}\n'])
  _rows(os.path.join(d, "not_json.jsonl"), [good, b"{'instruction': 'x'}\n"])
  _rows(os.path.join(d, "empty_output.jsonl"), [dict(good, output="  ")] * 3)
  _config_file(os.path.join(d, "unknown_key.py"), "  c.optimizer.learnin_rate = 1.0\n")
  _config_file(
    os.path.join(d, "wrong_type.py"), "  c.lora = config_dict.ConfigDict(dict(c.lora, rank='8'))\n"
  )
  _write(os.path.join(d, "syntax.py"), b"def get_config(:\n  pass\n")
  _write(os.path.join(d, "a_file"), b"not a directory")
  return d


def _p(*parts):
  return lambda d: os.path.join(d, *parts)


# (id, overrides: dotted key -> value or f(d) -> value, [substrings the error line must hold])
CASES = [
  ("unknown_key_override", {"optimzer.learning_rate": 1e-3}, ["optimzer", "optimizer"]),
  ("unknown_key_in_file", {"CONFIG": _p("unknown_key.py")}, ["optimizer.learnin_rate"]),
  ("wrong_type_override", {"steps": "ten"}, ["--config.steps=ten", "int"]),
  ("wrong_type_in_file", {"CONFIG": _p("wrong_type.py")}, ["lora.rank", "must be int, got str"]),
  ("config_file_missing", {"CONFIG": _p("nope.py")}, ["nope.py"]),
  ("config_file_syntax", {"CONFIG": _p("syntax.py")}, ["syntax.py", "line 1"]),
  ("learning_rate_zero", {"optimizer.learning_rate": 0.0}, ["optimizer.learning_rate", "> 0"]),
  ("learning_rate_negative", {"optimizer.learning_rate": -1e-3}, ["optimizer.learning_rate"]),
  ("steps_zero", {"steps": 0}, ["steps must be > 0"]),
  ("steps_negative", {"steps": -5}, ["steps must be > 0", "-5"]),
  ("rank_zero", {"lora.rank": 0}, ["lora.rank must be > 0"]),
  ("rank_negative", {"lora.rank": -4}, ["lora.rank must be > 0"]),
  ("rank_larger_than_layer", {"lora.rank": 100}, ["rank 100", "exceeds", "layers.0."]),
  ("lora_target_not_a_regex", {"lora.targets": "q_proj(["}, ["q_proj([", "not a valid regex"]),
  ("lora_target_matches_nothing", {"lora.targets": "qkv_proj"}, ["qkv_proj", "match no"]),
  ("dropout_out_of_range", {"lora.dropout": 1.0}, ["lora.dropout"]),
  ("unknown_method", {"method": "qlora"}, ["method must be", "qlora"]),
  ("unknown_quantize", {"quantize": "int3"}, ["quantize", "int3"]),
  ("adam_b1_above_one", {"optimizer.b1": 1.5}, ["optimizer.b1 must be in [0, 1)", "1.5"]),
  ("adam_b2_negative", {"optimizer.b2": -0.1}, ["optimizer.b2 must be in [0, 1)"]),
  ("clip_norm_negative", {"optimizer.clip_norm": -1.0}, ["optimizer.clip_norm must be >= 0"]),
  ("lora_alpha_nan", {"lora.alpha": float("nan")}, ["lora.alpha must be > 0", "nan"]),
  (
    "learning_rate_inf",
    {"optimizer.learning_rate": float("inf")},
    ["optimizer.learning_rate must be > 0", "inf"],
  ),
  (
    "end_lr_fraction_above_one",
    {"optimizer.end_lr_fraction": 2.0},
    ["optimizer.end_lr_fraction must be in [0, 1]"],
  ),
  ("weight_decay_negative", {"optimizer.weight_decay": -0.01}, ["optimizer.weight_decay"]),
  ("warmup_negative", {"optimizer.warmup_steps": -1}, ["optimizer.warmup_steps must be >= 0"]),
  ("seq_len_one", {"data.seq_len": 1}, ["data.seq_len must be >= 2"]),
  ("workers_negative", {"data.workers": -1}, ["data.workers must be >= 0"]),
  ("eval_batch_size_zero", {"data.eval_batch_size": 0}, ["data.eval_batch_size must be > 0"]),
  ("mesh_size_zero", {"mesh.fsdp": 0}, ["mesh.fsdp must be -1 or >= 1"]),
  ("classify_limit_negative", {"classify.limit": -3}, ["classify.limit must be >= 0"]),
  ("unknown_dtype", {"model.dtype": "float8"}, ["model.dtype must be one of", "float8"]),
  ("unknown_attention_impl", {"model.attn_impl": "flash"}, ["model.attn_impl", "flash"]),
  ("unknown_export_type", {"export.gguf": "q4_0"}, ["export.gguf", "q4_0"]),
  ("log_every_zero", {"log_every": 0}, ["log_every must be > 0"]),
  (
    "batch_not_multiple_of_accum",
    {"data.batch_size": 3, "optimizer.grad_accum": 2},
    ["data.batch_size 3", "grad_accum 2"],
  ),
  ("keep_checkpoints_zero", {"keep_checkpoints": 0}, ["keep_checkpoints"]),
  ("bad_rows_policy", {"data.on_bad_rows": "ignore"}, ["data.on_bad_rows"]),
  ("checkpoint_dir_missing", {"model.path": _p("no_such_model")}, ["model.path", "no_such_model"]),
  (
    "checkpoint_tensor_missing",
    {"model.path": _p("missing_tensor")},
    ["missing_tensor", MISSING, "missing"],
  ),
  (
    "checkpoint_tensor_wrong_shape",
    {"model.path": _p("wrong_shape")},
    ["wrong_shape", MISSING, "shape (128, 7)"],
  ),
  (
    "checkpoint_kv_heads_zero",
    {"model.path": _p("kv_heads_zero")},
    ["kv_heads_zero/config.json", "num_key_value_heads", "integer >= 1", "got 0"],
  ),
  (
    "checkpoint_eos_is_a_string",
    {"model.path": _p("eos_string")},
    ["eos_string/config.json", "eos_token_id", "'</s>'"],
  ),
  ("checkpoint_config_not_json", {"model.path": _p("bad_json")}, ["bad_json/config.json", "JSON"]),
  (
    "checkpoint_weights_truncated",
    {"model.path": _p("truncated")},
    ["truncated/model.safetensors", "safetensors"],
  ),
  (
    "weights_cut_in_half",
    {"model.path": _p("weights_half")},
    ["weights_half/model.safetensors", "truncated"],
  ),
  (
    "weights_missing_last_byte",
    {"model.path": _p("weights_last_byte")},
    ["weights_last_byte/model.safetensors", "truncated"],
  ),
  (
    "weights_offsets_past_end",
    {"model.path": _p("weights_past_end")},
    ["weights_past_end/model.safetensors", MISSING],
  ),
  (
    "weights_dtype_rewritten",
    {"model.path": _p("weights_dtype")},
    ["weights_dtype/model.safetensors", MISSING, "F16"],
  ),
  ("weights_not_finite", {"model.path": _p("weights_nan")}, [MISSING, "non-finite"]),
  (
    "unsupported_architecture",
    {"model.path": _p("mistral")},
    ["mistral/config.json", "MistralForCausalLM"],
  ),
  ("tokenizer_missing", {"model.path": _p("no_tokenizer")}, ["no_tokenizer", "tokenizer"]),
  (
    "tokenizer_unreadable",
    {"model.path": _p("bad_tokenizer")},
    ["bad_tokenizer/tokenizer.json", "not an HF tokenizer"],
  ),
  (
    "tokenizer_vocab_too_large",
    {"model.path": "", "model.preset": "gemma2-tiny", "model.tokenizer": _p("model")},
    ["model/tokenizer.json has vocab_size 433", "vocab_size is 256"],
  ),
  ("data_file_missing", {"data.train": _p("nope.jsonl")}, ["data.train", "nope.jsonl"]),
  ("data_file_empty", {"data.train": _p("empty.jsonl")}, ["empty.jsonl", "empty"]),
  (
    "data_file_is_directory",
    {"data.train": _p("a_directory.jsonl")},
    ["a_directory.jsonl", "directory"],
  ),
  (
    "data_file_unreadable_bytes",
    {"data.train": _p("binary.jsonl")},
    ["binary.jsonl row 1", "invalid"],
  ),
  (
    "row_missing_field",
    {"data.train": _p("missing_field.jsonl")},
    ["missing_field.jsonl row 3", "missing field", "'output'"],
  ),
  ("row_not_utf8", {"data.train": _p("non_utf8.jsonl")}, ["non_utf8.jsonl row 2", "UTF-8"]),
  ("row_not_json", {"data.train": _p("not_json.jsonl")}, ["not_json.jsonl row 2", "invalid JSON"]),
  (
    "validation_row_not_json",
    {"data.validation": _p("not_json.jsonl"), "eval_every": 1},
    ["not_json.jsonl row 2", "invalid JSON"],
  ),  # found before training, not at the first eval
  (
    "row_empty_response",
    {"data.train": _p("empty_output.jsonl")},
    ["empty_output.jsonl row 1", "empty response"],
  ),
  ("every_token_masked", {"data.seq_len": 8}, ["train.jsonl", "no target", "seq_len 8"]),
  (
    "sequence_longer_than_model",
    {"data.seq_len": 4096},
    ["data.seq_len 4096", "max_position_embeddings 512"],
  ),
  ("mesh_does_not_divide_devices", {"mesh.fsdp": 3}, ["mesh", "fsdp=3", "1"]),
  (
    "workdir_not_writable",
    {"workdir": _p("a_file", "run")},
    ["workdir", "a_file", "not a directory"],
  ),
]


@pytest.mark.parametrize("overrides,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(d, tmp_path, overrides, needles):
  overrides = {k: v(d) if callable(v) else v for k, v in overrides.items()}
  config = overrides.pop("CONFIG", CONFIG)
  workdir = overrides.pop("workdir", str(tmp_path / "run"))
  overrides = {k.replace(".", "__"): v for k, v in overrides.items()}
  argv = [a for a in base_args(d, workdir, **overrides) if not a.startswith("--config=")]
  status, err, _ = invoke(finetune.main, [f"--config={config}", *argv])
  lines = err.strip().splitlines()
  assert status == 2, err
  assert len(lines) == 1 and lines[0].startswith("finetune.py: error: "), err
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  assert not os.path.exists(workdir)  # nothing written


def _snapshot(path):
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.relpath(os.path.join(root, name), path)] = f.read()
  return out


@pytest.mark.parametrize("kind", ["other_run", "not_a_run"])
def test_existing_workdir_is_refused_untouched(d, tmp_path, kind):
  workdir = tmp_path / "run"
  workdir.mkdir()
  if kind == "other_run":  # a finished run of another config: its outputs must survive
    (workdir / "config.json").write_text(json.dumps(run_config(d, str(workdir), steps=99)))
    (workdir / "summary.json").write_text('{"final_loss": 1.0}')
    (workdir / "adapter").mkdir()
    (workdir / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    needles = ["holds a run with a different config", "steps 99 -> 2"]
  else:
    (workdir / "notes.txt").write_text("mine")
    needles = ["not empty", "config.json"]
  before = _snapshot(workdir)
  status, err, _ = invoke(finetune.main, base_args(d, str(workdir)))
  assert status == 2 and len(err.strip().splitlines()) == 1, err
  for needle in needles:
    assert needle in err
  assert _snapshot(workdir) == before


def test_workdir_of_the_same_run_is_resumed(d, tmp_path):
  from gemmax.train.workdir import check_workdir, claim_workdir

  workdir = str(tmp_path / "run")
  config = run_config(d, workdir)
  assert claim_workdir(workdir, config, finetune.RESUME_MAY_DIFFER) is False  # a new run
  assert (
    check_workdir(
      workdir, run_config(d, workdir, log_every=5, progress=True), finetune.RESUME_MAY_DIFFER
    )
    is True
  )
  saved = json.load(open(os.path.join(workdir, "config.json")))
  del saved["halt_on_nonfinite"]  # a run from before an option existed still resumes
  _write(os.path.join(workdir, "config.json"), json.dumps(saved).encode())
  assert check_workdir(workdir, config, finetune.RESUME_MAY_DIFFER) is True


def _guarded(fn, name="evaluate.py"):
  """Status and stderr of `fn` run under the scripts' error wrapper."""
  from gemmax import cli

  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      cli.guard(fn, name)()
    return 0, err.getvalue()
  except SystemExit as e:
    return e.code, err.getvalue()


def test_adapter_for_another_base_model(d, tmp_path):
  from flax import nnx
  from gemmax import peft
  from gemmax.models import ModelConfig, Transformer

  small = ModelConfig.preset("gemma2-tiny", num_hidden_layers=1)
  model = peft.apply(Transformer(small, rngs=nnx.Rngs(0)), rank=2)
  peft.save_adapter(model, str(tmp_path / "adapter"))
  other = Transformer(small.replace(num_hidden_layers=2), rngs=nnx.Rngs(0))
  status, err = _guarded(lambda: peft.load_adapter(other, str(tmp_path / "adapter")))
  assert status == 2 and len(err.strip().splitlines()) == 1, err
  assert "adapter was made for a different base model" in err and "num_hidden_layers 1 vs 2" in err


def test_sharding_that_does_not_divide_a_dimension():
  from jax.sharding import AbstractMesh
  from gemmax import sharding
  from gemmax.models import ModelConfig
  from gemmax.models.sizing import abstract_model

  model = abstract_model(ModelConfig.preset("gemma2-tiny", num_hidden_layers=1))
  mesh = AbstractMesh((1, 3, 1), sharding.MESH_AXES)
  status, err = _guarded(lambda: sharding.model_shardings(model, mesh), "finetune.py")
  assert status == 2 and len(err.strip().splitlines()) == 1, err
  assert "embed_tokens/embedding: dim 1 ('embed', size 64) is not divisible" in err


def test_debug_flag_shows_the_traceback(d, tmp_path):
  argv = base_args(d, str(tmp_path / "run"), model__path=os.path.join(d, "missing_tensor"))
  with pytest.raises(KeyError, match=MISSING):
    invoke(finetune.main, [*argv, "--debug"])


def test_distillation_store_from_another_tokenizer(d, tmp_path):
  from gemmax import data, distill
  from gemmax.convert import load_hf
  from finetune_assets import write_tokenizer

  tok = data.load_tokenizer(os.path.join(d, "model"))
  store = str(tmp_path / "store")
  distill.write_teacher_store(
    load_hf(os.path.join(d, "model")),
    tok,
    data.SourceSpec(os.path.join(d, "train.jsonl")),
    store,
    k=2,
    seq_len=64,
    batch_size=2,
    progress=False,
    teacher_id="tiny",
  )
  os.makedirs(tmp_path / "other")
  write_tokenizer(str(tmp_path / "other"), ["a different corpus for another tokenizer"] * 8, 300)
  other = data.load_tokenizer(str(tmp_path / "other"))
  status, err = _guarded(lambda: distill.TopKStore(store).check(tokenizer=other), "distill.py")
  assert status == 2 and len(err.strip().splitlines()) == 1, err
  assert "distill.py: error: " in err and "store: tokenizer mismatch" in err


@pytest.mark.parametrize(
  "raised,status",
  [
    ("GemmaxError('data.train x.jsonl row 3: missing field')", 2),  # the user's to fix
    ("FileNotFoundError(2, 'No such file or directory', 'x.jsonl')", 2),
    ("ValueError('operands could not be broadcast')", 1),  # gemmax's own bug: a traceback
    ("KeyError('layers')", 1),
    ("TypeError('unsupported operand')", 1),
  ],
)
def test_user_errors_exit_2_and_bugs_exit_1(tmp_path, raised, status):
  """One error boundary: what gemmax raises about a user's files and values (GemmaxError) or what
  the OS refuses is one line and exit 2; any other exception is a bug, shown with its traceback."""
  import subprocess

  script = tmp_path / "tool.py"
  script.write_text(
    "from gemmax import cli\nfrom gemmax.errors import GemmaxError\n"
    f"def main(argv):\n  raise {raised}\n"
    "if __name__ == '__main__':\n  cli.run(main)\n"
  )
  p = subprocess.run(
    [sys.executable, str(script)],
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert p.returncode == status, p.stderr
  if status == 2:
    assert (
      p.stderr.strip().startswith("tool.py: error: ") and len(p.stderr.strip().splitlines()) == 1
    ), p.stderr
  else:
    assert "Traceback (most recent call last)" in p.stderr, p.stderr
