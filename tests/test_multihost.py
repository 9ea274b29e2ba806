"""Two local processes x 4 CPU devices under jax.distributed == one process x 8 devices."""

import json
import os
import socket
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "sharding_worker.py")


def _result(text):
  lines = [l for l in text.splitlines() if l.startswith("RESULT ")]
  assert lines, text[-3000:]
  return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.slow
def test_two_processes_reach_single_process_losses():
  s = socket.socket()
  s.bind(("127.0.0.1", 0))
  port = s.getsockname()[1]
  s.close()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [
    subprocess.Popen(
      [sys.executable, WORKER, "train", f"127.0.0.1:{port}", "2", str(i)],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for i in range(2)
  ]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=240)  # a hang fails the test instead of CI
      assert p.returncode == 0, err[-3000:]
      outs.append(_result(out))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  single = subprocess.run(
    [sys.executable, WORKER, "train"], capture_output=True, text=True, timeout=240, env=env
  )
  assert single.returncode == 0, single.stderr[-3000:]
  ref = _result(single.stdout)
  assert ref["processes"] == 1 and ref["devices"] == 8
  for got in outs:
    assert got["processes"] == 2 and got["devices"] == 8
    assert max(abs(a - b) for a, b in zip(got["losses"], ref["losses"])) <= 1e-5, (got, ref)
