"""benchmarks/real_model.py end to end in its --quick mode (slow: the real SmolLM2 file, which
.ci/run fetches once, and transformers + peft in worker processes). Proves the plumbing only:
tiny sizes and one round, so the ratios it prints mean nothing."""

import os
import re
import subprocess
import sys

import pytest

from gemmax.fetch import resolve

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_writes_table_chart_and_last_line(tmp_path):
  resolve("smollm2-135m-instruct")  # fetched (cached) before the timed run
  out = tmp_path / "real_model.md"
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "benchmarks", "real_model.py"),
      "--quick",
      "--out",
      str(out),
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = proc.stdout.strip().splitlines()[-1]
  assert re.fullmatch(
    r"real_lora_vs_peft=\d+\.\d\d real_decode_b1_roofline=\d+\.\d\d "
    r"real_decode_vs_hf_b8=\d+\.\d\d",
    last,
  ), last
  table = out.read_text()
  for row in ("| lora bfloat16 |", "| float32 batch 1 |", "| float32 batch 8 |", "| float32 |"):
    assert row in table, table
  assert (tmp_path / "real_model.png").stat().st_size > 1000
  # the LoRA step's floor (no adapters) timed in the same rounds, and peft's time over it
  assert re.search(r"\| lora bfloat16 \| [\d,]+ \| [\d,]+ \| [\d,]+ \| \d+\.\d\dx \|", table), table
  # the products-alone ceiling beside each decode row: tok/s, fraction of the roofline at batch 1
  assert re.search(r"\| float32 batch 1 \| [\d,.]+ \| \d+% \| \d+\.\d\dx \|", table), table
  # both sides decoded the same prompts greedily from the same weights: same first token
  assert re.search(r"float32 b1 [1-9]\d*/\d+", table), table
