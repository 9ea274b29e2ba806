"""Bad config values of experiments/evaluate.py, generate.py, pretrain.py and best_of_n.py: one line naming the
key, exit 2, before any model loads and with no workdir (or pretrain output) created (subprocesses: each script
defines its own --config flag)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [
  (
    "generate.py",
    "temperature_negative",
    ["--config.temperature=-1"],
    ["temperature must be >= 0", "-1"],
  ),
  ("generate.py", "temperature_nan", ["--config.temperature=nan"], ["temperature", "nan"]),
  ("generate.py", "top_p_negative", ["--config.top_p=-0.5"], ["top_p must be in (0, 1]"]),
  ("generate.py", "top_p_above_one", ["--config.top_p=1.5"], ["top_p must be in (0, 1]"]),
  ("generate.py", "top_k_negative", ["--config.top_k=-3"], ["top_k must be >= 0"]),
  (
    "generate.py",
    "max_new_tokens_zero",
    ["--config.max_new_tokens=0"],
    ["max_new_tokens must be > 0"],
  ),
  ("generate.py", "max_len_one", ["--config.max_len=1"], ["max_len must be >= 2"]),
  ("generate.py", "unknown_dtype", ["--config.model.dtype=int8"], ["model.dtype", "int8"]),
  ("generate.py", "empty_model", ["--config.model.path="], ["model.path is empty"]),
  (
    "evaluate.py",
    "batch_size_negative",
    ["--config.batch_size=-1"],
    ["batch_size must be > 0", "-1"],
  ),
  (
    "evaluate.py",
    "few_shot_negative",
    ["--config.classification.few_shot=-1"],
    ["classification.few_shot must be >= 0"],
  ),
  (
    "evaluate.py",
    "window_one",
    ["--config.perplexity.window=1"],
    ["perplexity.window must be >= 2"],
  ),
  (
    "evaluate.py",
    "stride_negative",
    ["--config.perplexity.stride=-4"],
    ["perplexity.stride must be >= 0"],
  ),
  (
    "evaluate.py",
    "unknown_reduction",
    ["--config.classification.reduction=max"],
    ["classification.reduction", "max"],
  ),
  (
    "evaluate.py",
    "unknown_format",
    ["--config.classification.format=csv"],
    ["classification.format", "csv"],
  ),
  ("evaluate.py", "unknown_task", ["--config.tasks=bleu"], ["bleu"]),
  (
    "evaluate.py",
    "label_template_typo",
    ["--config.classification.label_template= {lable}"],
    ["classification.label_template", "lable"],
  ),
  (
    "evaluate.py",
    "exact_match_tokens_zero",
    ["--config.tasks=exact_match", "--config.exact_match.max_new_tokens=0"],
    ["exact_match.max_new_tokens must be > 0"],
  ),
  (
    "pretrain.py",
    "seq_len_beyond_context",
    ["--config.data.seq_len=4096"],
    ["data.seq_len 4096", "max_position_embeddings 2048"],
  ),
  (
    "pretrain.py",
    "heads_not_multiple_of_kv",
    ["--config.model.num_key_value_heads=3"],
    ["num_attention_heads 4", "num_key_value_heads 3"],
  ),
  ("pretrain.py", "adam_b1_above_one", ["--config.optimizer.b1=1.5"], ["optimizer.b1", "1.5"]),
  (
    "pretrain.py",
    "vocab_smaller_than_tokenizer",
    ["--config.model.vocab_size=100"],
    ["tokenizer.model has vocab_size 8192", "vocab_size is 100"],
  ),
  ("pretrain.py", "corpus_missing", ["--config.data.corpus=nope.txt"], ["data.corpus", "nope.txt"]),
  ("pretrain.py", "trec_row_bad", ["--config.data.trec_train={bad_rows}"], ["bad.jsonl row 2"]),
  ("best_of_n.py", "n_zero", ["--config.n=0"], ["n must be > 0"]),
  ("best_of_n.py", "temperature_zero", ["--config.temperature=0"], ["temperature must be > 0"]),
  ("best_of_n.py", "file_missing", ["--config.data.file=nope.jsonl"], ["data.file", "nope.jsonl"]),
  ("best_of_n.py", "unknown_reward", ["--config.rewards=nosuch:fn"], ["nosuch:fn", "import"]),
  (
    "best_of_n.py",
    "reward_not_a_function",
    ["--config.rewards=gemmax.evals.rewards:nothing"],
    ["gemmax.evals.rewards:nothing", "no function nothing"],
  ),
  ("best_of_n.py", "weights_count", ["--config.weights=1,2"], ["1 reward functions but 2"]),
  ("best_of_n.py", "weights_text", ["--config.weights=one"], ["weights", "'one'"]),
]


@pytest.mark.parametrize(
  "script,flags,needles", [c[:1] + c[2:] for c in CASES], ids=[c[1] for c in CASES]
)
def test_bad_value_is_one_line_exit_2(tmp_path, script, flags, needles):
  work = tmp_path / "work"
  bad_rows = tmp_path / "bad.jsonl"
  bad_rows.write_text('{"instruction": "x", "input": "q"}\n{"instruction": "x"}\n')
  cmd = [
    sys.executable,
    os.path.join(ROOT, "experiments", script),
    "--config",
    os.path.join(ROOT, "experiments", "configs", script),
    *[f.replace("{bad_rows}", str(bad_rows)) for f in flags],
  ]
  if script in ("evaluate.py", "best_of_n.py"):
    cmd.append(f"--config.workdir={work}")
  if script == "pretrain.py":
    cmd += [f"--config.workdir={work}", f"--config.output={tmp_path / 'out'}"]
  p = subprocess.run(
    cmd,
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    stdin=subprocess.DEVNULL,
  )
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2, p.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), p.stderr[-2000:]
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  assert not work.exists() and not (tmp_path / "out").exists() and p.stdout == ""
