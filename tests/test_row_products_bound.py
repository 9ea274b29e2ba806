"""benchmarks/row_products_bound.c: the hand-written bound behind issue 25's decode figures must
compute the products it times (each kernel's head rows against a double-precision sum)."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "benchmarks", "row_products_bound.c")


def _has_avx512() -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      return " avx512f " in f.read()
  except OSError:
    return False


@pytest.mark.skipif(
  shutil.which("gcc") is None or not _has_avx512(),
  reason="the bound is AVX-512 intrinsics built with gcc: it cannot compile or run without both",
)
def test_every_kernel_computes_the_products_it_times(tmp_path):
  binary = tmp_path / "row_bound"
  subprocess.run(
    ["gcc", "-O3", "-march=native", "-fopenmp", SOURCE, "-o", str(binary), "-lm"],
    check=True,
    capture_output=True,
  )
  proc = subprocess.run(
    [str(binary), "1"],
    env=dict(os.environ, OMP_NUM_THREADS="2"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = [
    line for line in proc.stdout.splitlines() if line.startswith("| ") and "kernel" not in line
  ]
  assert any(row.startswith("| batch 1, f32 FMA |") for row in rows), proc.stdout
  assert any(row.startswith("| batch 1, bf16 widen + FMA |") for row in rows), proc.stdout
  for row in rows:  # milliseconds and GB/s are positive numbers
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[2]) > 0, row
