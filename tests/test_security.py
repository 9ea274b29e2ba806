"""Security: gemmax never unpickles, never runs code that comes with a checkpoint or dataset.

1. A scan of the package and the experiment scripts (their syntax trees, so docs may say "pickle"):
   no pickle-family imports, no torch.load / read_pickle / unsafe yaml, no allow_pickle=True or
   trust_remote_code=True, no eval / exec / compile / __import__.
2. A checkpoint and a dataset that carry code (a pickled payload, a remote-code module named in
   config.json's auto_map, a Jinja chat template in tokenizer_config.json) are read without running
   any of it.
Writes staying inside the workdir are checked on a real run: tests/test_crash_resume.py
(test_writes_stay_inside_the_workdir).
"""

import ast
import json
import os
import pickle
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("gemmax", "experiments")
BANNED_MODULES = {
  "pickle",
  "cPickle",
  "_pickle",
  "dill",
  "cloudpickle",
  "joblib",
  "marshal",
  "shelve",
  "jsonpickle",
  "pickletools",
}
BANNED_CALLS = {
  "torch.load",
  "torch.jit.load",
  "pd.read_pickle",
  "pandas.read_pickle",
  "read_pickle",
  "yaml.load",
  "yaml.unsafe_load",
  "yaml.full_load",
  "np.load",
  "numpy.load",
  "eval",
  "exec",
  "compile",
  "__import__",
  "os.system",
  "os.popen",
}
BANNED_KEYWORDS = {("allow_pickle", True), ("trust_remote_code", True), ("shell", True)}


def _sources():
  for top in SCANNED:
    for root, _, files in os.walk(os.path.join(ROOT, top)):
      for name in files:
        if name.endswith(".py"):
          yield os.path.join(root, name)


def _dotted(node):
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    base = _dotted(node.value)
    return f"{base}.{node.attr}" if base else None
  return None


def _problems(path):
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  where = lambda node: f"{os.path.relpath(path, ROOT)}:{node.lineno}"
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] in BANNED_MODULES:
          yield f"{where(node)} imports {alias.name}"
    elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
      yield f"{where(node)} imports from {node.module}"
    elif isinstance(node, ast.Call):
      name = _dotted(node.func)
      if name in BANNED_CALLS:
        yield f"{where(node)} calls {name}"
      for kw in node.keywords:
        if isinstance(kw.value, ast.Constant) and (kw.arg, kw.value.value) in BANNED_KEYWORDS:
          yield f"{where(node)} passes {kw.arg}={kw.value.value}"


def test_package_never_unpickles_or_evaluates():
  files = list(_sources())
  assert len(files) > 40  # the scan sees the package
  problems = [p for path in files for p in _problems(path)]
  assert not problems, "\n".join(problems)


def test_scan_catches_what_it_bans(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text(
    "import pickle\nfrom dill import loads\nimport torch\ntorch.load('x')\n"
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)\neval('1')\n"
    "f(trust_remote_code=True)\n"
  )
  found = list(_problems(str(bad)))
  assert len(found) == 7, found


class _Payload:
  """Unpickling this creates a file: proof that someone unpickled."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
  """A checkpoint dir and data files that carry code, and the marker files that code would make."""
  from finetune_assets import make_assets

  d = make_assets(str(tmp_path_factory.mktemp("hostile")))
  model = os.path.join(d, "model")
  markers = {k: os.path.join(d, f"ran_{k}") for k in ("pickle", "remote", "template", "data")}
  with open(os.path.join(model, "pytorch_model.bin"), "wb") as f:
    f.write(pickle.dumps(_Payload(markers["pickle"])))
  with open(os.path.join(model, "modeling_evil.py"), "w") as f:
    f.write(f"open({markers['remote']!r}, 'w').close()\n")
  with open(os.path.join(model, "config.json")) as f:
    cfg = json.load(f)
  cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
  with open(os.path.join(model, "config.json"), "w") as f:
    json.dump(cfg, f)
  with open(os.path.join(model, "tokenizer_config.json")) as f:
    tcfg = json.load(f)
  tcfg["auto_map"] = {"AutoTokenizer": ["modeling_evil.EvilTokenizer", None]}
  tcfg["chat_template"] = (
    f"{{{{ cycler.__init__.__globals__.os.open({markers['template']!r}, 65) }}"
  )
  with open(os.path.join(model, "tokenizer_config.json"), "w") as f:
    json.dump(tcfg, f)
  code = f"__import__('os').open({markers['data']!r}, 65)"
  with open(os.path.join(d, "evil.jsonl"), "w") as f:
    for _ in range(4):
      f.write(json.dumps({"instruction": code, "input": "{{ 7*7 }}", "output": code}) + "\n")
  with open(os.path.join(d, "evil.pkl"), "wb") as f:
    f.write(pickle.dumps(_Payload(markers["data"])))
  return d, markers


def test_checkpoint_and_data_code_never_runs(hostile):
  from gemmax import data, peft
  from gemmax.convert import load_hf

  d, markers = hostile
  model = load_hf(os.path.join(d, "model"))
  peft.apply(model, rank=2)
  tok = data.load_tokenizer(os.path.join(d, "model"))
  text = data.render_chat(
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "gemma"
  )
  assert tok.encode(text)
  it = data.make_pipeline(
    data.SourceSpec(os.path.join(d, "evil.jsonl")),
    tok,
    data.DataConfig(seq_len=512, batch_size=2, prefetch=0),
  )
  assert next(it)["loss_mask"].any()  # the "code" is just text to train on
  with pytest.raises(ValueError, match="evil.pkl"):  # no reader for pickles at all
    data.load_records(data.SourceSpec(os.path.join(d, "evil.pkl")))
  # Only pytorch_model.bin (no safetensors): refused, not unpickled.
  only_bin = os.path.join(d, "only_bin")
  os.makedirs(only_bin)
  for name in ("config.json", "pytorch_model.bin"):
    shutil.copy(os.path.join(d, "model", name), only_bin)
  with pytest.raises(FileNotFoundError, match="only safetensors"):
    load_hf(only_bin)
  assert not [k for k, path in markers.items() if os.path.exists(path)]
