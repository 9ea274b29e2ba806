"""benchmarks/gpu_check.py's dry run: the device call's script must work before a GPU is lent."""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
# A slice of the dry run: every kind of row (check, attention local/global, train step), and the
# cudnn rows, which fail on CPU and must come back as rows. The full dry run takes about a minute.
ONLY = (
  "check/hd64/pallas,check/hd64/cudnn,attn/hd64/s256/local/softcapnone,"
  "attn/hd64/s256/global/softcapnone,train/lora/pallas/none,train/lora/cudnn"
)


def _run(out, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, SCRIPT, "--dry-run", "--out", str(out), *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  with open(os.path.join(out, "gpu_check.json")) as f:
    return proc.stdout, json.load(f)


def test_dry_run_writes_table_and_json(tmp_path):
  stdout, res = _run(tmp_path, "--only", ONLY, "--peak-tflops", "1")
  assert (tmp_path / "gpu_check.md").read_text().count("| pallas |") >= 2
  rows = res["rows"]
  assert res["meta"]["complete"] and res["meta"]["dry_run"]
  # Every planned job has a row, selected or not.
  for key in (
    "check/hd64/pallas/softcap50",
    "check/hd64/xla/softcapnone",
    "attn/hd64/s128/local/softcapnone/xla/fwd",
    "train/full/pallas/save_dots",
    "train/lora/cudnn-nosoftcap/none",
    "ratio/hd64/softcapnone/pallas/fwd",
  ):
    assert key in rows, key
  for sc in ("50", "none"):
    assert rows[f"check/hd64/pallas/softcap{sc}"]["status"] == "pass"
  for impl in ("pallas", "xla"):
    for where in ("local", "global"):
      for p in ("fwd", "fwdbwd"):
        row = rows[f"attn/hd64/s256/{where}/softcapnone/{impl}/{p}"]
        assert row["status"] == "ok" and math.isfinite(row["tflops"]) and row["tflops"] > 0
  assert rows["check/hd64/cudnn/softcapnone"]["status"].startswith("unsupported")
  assert rows["attn/hd64/s256/local/softcapnone/cudnn/fwd"]["status"].startswith("unsupported")
  assert rows["attn/hd64/s128/local/softcapnone/xla/fwd"]["status"] == "not selected (--only)"
  lora = rows["train/lora/pallas/none"]
  assert lora["status"] == "ok", lora
  for k in ("tokens_per_s", "mfu", "step_ms", "loss"):
    assert math.isfinite(lora[k]), k
  assert rows["train/lora/cudnn-nosoftcap/none"]["status"].startswith("unsupported")
  assert 0 < rows["ratio/hd64/softcapnone/pallas/fwd"]["local_over_global"] < 10
  last = stdout.strip().splitlines()[-1]
  assert last.startswith("gpu_check pallas_fwd_tflops_hd64_s256=") and "lora_mfu=" in last
  assert "nan" not in last, last


def test_time_budget_skips_rather_than_runs(tmp_path):
  stdout, res = _run(tmp_path, "--budget-s", "0")
  statuses = {r["status"] for k, r in res["rows"].items()}
  assert statuses == {"skipped (time budget)"}, statuses
  assert stdout.strip().splitlines()[-1].endswith("local_over_global=nan lora_mfu=nan")
