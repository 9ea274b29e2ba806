"""Crashes and preemption of experiments/finetune.py, each resumed, ending bit-identical (CPU) to an
uninterrupted run: final parameters, optimizer state, adapter file and logged losses.

SIGKILL lands at seeded random points, one of them inside a checkpoint write (tests/crash_runner.py
pauses Orbax just before it commits step N); the resumed run must restore the last *complete*
checkpoint, never the half-written one. SIGTERM / SIGINT must finish the step, write a checkpoint
and exit with status 75. The default test kills once, mid-write; the full version (three SIGKILLs,
then SIGTERM and SIGINT) is marked slow. tests/test_train_reliability.py covers preemption
in-process.
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from finetune_assets import ROOT, base_args, make_assets

RUNNER = os.path.join(ROOT, "tests", "crash_runner.py")
# Enough steps that a signal sent at the last target step never lands after the run has ended
# (on a fast step, 14 left one step after the SIGINT target and the run could finish first).
STEPS, EVERY = 20, 2
PREEMPTED = 75


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  # One compilation cache for every run of this module: resumed runs skip recompiling.
  cache = tmp_path_factory.mktemp("jax_cache")
  return dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.path.join(ROOT, "tests"),
    JAX_COMPILATION_CACHE_DIR=str(cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    TOKENIZERS_PARALLELISM="false",
  )


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  return make_assets(str(tmp_path_factory.mktemp("crash_assets")))


def _args(assets, workdir):
  return base_args(
    assets,
    str(workdir),
    steps=STEPS,
    checkpoint_every=EVERY,
    keep_checkpoints=2,
    optimizer__learning_rate=1e-2,
  )


def _start(assets, workdir, env, pause_step=None):
  env = dict(env)
  if pause_step is not None:
    env.update(
      GEMMAX_TEST_PAUSE_SAVE_STEP=str(pause_step), GEMMAX_TEST_PAUSE_MARKER=str(workdir) + ".paused"
    )
  started = time.time()
  proc = subprocess.Popen(
    [sys.executable, RUNNER, *_args(assets, workdir)],
    env=env,
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  proc.started = started
  return proc


def _finish(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def _logged_steps(workdir, since=0.0):
  """Steps in metrics.jsonl, if the file was written after `since` (a resumed run rewrites it)."""
  from gemmax.train import read_jsonl

  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path) or os.path.getmtime(path) < since:
    return []
  return [l["step"] for l in read_jsonl(path, skip_torn=True)]


def _complete_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _wait(proc, ready, what, timeout=300):
  end = time.time() + timeout
  while not ready():
    if proc.poll() is not None:
      out, err = proc.communicate()
      pytest.fail(
        f"run ended (status {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}"
      )
    if time.time() > end:
      proc.kill()
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.05)


def _kill_at_step(proc, workdir, step, rng):
  """SIGKILL a random moment after `step` was logged. Returns the checkpoints complete then."""
  _wait(proc, lambda: any(s >= step for s in _logged_steps(workdir, proc.started)), f"step {step}")
  time.sleep(rng.uniform(0.0, 0.5))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return _complete_steps(workdir)


def _kill_during_write(proc, workdir, step):
  """SIGKILL while checkpoint `step` is being written (paused before Orbax commits it)."""
  marker = str(workdir) + ".paused"
  _wait(proc, lambda: os.path.exists(marker), f"checkpoint {step} write")
  tmp = open(marker).read()
  assert os.path.isdir(tmp) and ".orbax-checkpoint-tmp" in os.path.basename(tmp), tmp
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  os.remove(marker)
  complete = _complete_steps(workdir)
  assert step not in complete and os.path.isdir(tmp), "the half-written checkpoint must stay tmp"
  return complete


def _resumed_from(out):
  lines = [l for l in out.splitlines() if l.startswith("resumed from step ")]
  return int(lines[-1].split()[3]) if lines else None


def _stop(proc, workdir, sig, step):
  """SIGTERM/SIGINT after `step`: the run must checkpoint the step it is on and exit 75."""
  _wait(proc, lambda: any(s >= step for s in _logged_steps(workdir, proc.started)), f"step {step}")
  proc.send_signal(sig)
  status, out, err = _finish(proc)
  assert status == PREEMPTED, (status, err[-3000:])
  assert "preempted" in err and "Traceback" not in err, err[-3000:]
  stopped = _logged_steps(workdir)[-1]
  assert _complete_steps(workdir)[-1] == stopped, (_complete_steps(workdir), stopped)
  return stopped, out


def _state(workdir):
  import orbax.checkpoint as ocp

  step = os.path.join(workdir, "checkpoints", str(STEPS))
  checkpointer = ocp.StandardCheckpointer()
  return {item: checkpointer.restore(os.path.join(step, item)) for item in ("params", "opt_state")}


def _assert_identical(reference, resumed):
  import jax

  a, b = _state(reference), _state(resumed)
  for item in a:
    la, lb = jax.tree_util.tree_flatten_with_path(a[item])[0], jax.tree.leaves(b[item])
    assert len(la) == len(lb) > 0, item
    for (path, x), y in zip(la, lb):
      assert np.array_equal(np.asarray(x), np.asarray(y)), f"{item}{jax.tree_util.keystr(path)}"
  adapter = os.path.join("adapter", "adapter_model.safetensors")
  assert (
    open(os.path.join(reference, adapter), "rb").read()
    == open(os.path.join(resumed, adapter), "rb").read()
  )
  from gemmax.train import read_jsonl

  ra = read_jsonl(os.path.join(reference, "metrics.jsonl"))
  rb = read_jsonl(os.path.join(resumed, "metrics.jsonl"))
  assert [l["step"] for l in rb] == list(range(1, STEPS + 1))
  assert [l["loss"] for l in ra] == [l["loss"] for l in rb]
  assert not [n for n in os.listdir(os.path.join(resumed, "checkpoints")) if "tmp" in n]


@pytest.fixture(scope="module")
def reference(assets, env, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference") / "run"
  writes = str(workdir) + ".writes"  # every path the run writes (crash_runner's audit hook)
  status, out, err = _finish(_start(assets, workdir, dict(env, GEMMAX_TEST_WRITE_LOG=writes)))
  assert status == 0, err[-3000:]
  assert _resumed_from(out) is None
  return str(workdir)


def test_writes_stay_inside_the_workdir(reference, env):
  """Security: a run writes files only inside its workdir (beyond third-party caches)."""
  import matplotlib

  allowed = [
    reference,
    "/proc/self",
    env["JAX_COMPILATION_CACHE_DIR"],
    matplotlib.get_configdir(),
    matplotlib.get_cachedir(),
  ]
  inside = lambda p: any(p == a or p.startswith(a + os.sep) for a in allowed)
  with open(reference + ".writes") as f:
    events = [line.rstrip("\n").split("\t") for line in f if line.strip()]
  assert any(path.endswith("summary.json") for _, path in events)
  outside = [(e, p) for e, p in events if not inside(p) and "__pycache__" not in p]
  assert not outside, outside[:10]


def test_kill_mid_checkpoint_write_resumes_bit_exact(assets, env, reference, tmp_path):
  rng = random.Random(10)
  workdir = str(tmp_path / "run")
  pause = rng.choice([4, 6])
  complete = _kill_during_write(_start(assets, workdir, env, pause_step=pause), workdir, pause)
  assert complete == [pause - EVERY]
  status, out, err = _finish(_start(assets, workdir, env))
  assert status == 0, err[-3000:]
  assert _resumed_from(out) == pause - EVERY  # the last complete checkpoint, not the torn one
  _assert_identical(reference, workdir)


@pytest.mark.slow
def test_three_kills_sigterm_sigint_resume_bit_exact(assets, env, reference, tmp_path):
  rng = random.Random(2024)
  workdir = str(tmp_path / "run")
  first, pause, third = rng.randint(1, 3), rng.choice([4, 6]), rng.randint(7, 8)
  expect = None  # the step each next run must resume from: the last complete checkpoint
  for kind, step in (("step", first), ("write", pause), ("step", third)):
    proc = _start(assets, workdir, env, pause_step=step if kind == "write" else None)
    if kind == "write":
      complete = _kill_during_write(proc, workdir, step)
      assert complete[-1] == step - EVERY
    else:
      complete = _kill_at_step(proc, workdir, step, rng)
    assert _resumed_from(proc.stdout.read()) == expect
    expect = complete[-1] if complete else None
  for sig in (signal.SIGTERM, signal.SIGINT):
    stopped, out = _stop(_start(assets, workdir, env), workdir, sig, (expect or 0) + 1)
    assert _resumed_from(out) == expect
    expect = stopped
  status, out, err = _finish(_start(assets, workdir, env))
  assert status == 0, err[-3000:]
  assert _resumed_from(out) == expect
  _assert_identical(reference, workdir)
