"""experiments/finetune.py (or the script GEMMAX_TEST_SCRIPT names, e.g. dpo or grpo), for
tests/test_crash_resume.py, tests/test_dpo_cli.py and tests/test_grpo_cli.py, with a test-only pause inside one
checkpoint write and an optional log of every file the run writes.

With GEMMAX_TEST_PAUSE_SAVE_STEP=N, the write of checkpoint N stops just before Orbax commits it
(its files are in `N.orbax-checkpoint-tmp-*`, not yet renamed to `N`), writes the temporary path to
GEMMAX_TEST_PAUSE_MARKER and sleeps, so the test can SIGKILL the run mid-write. The library itself
has no such hook. With GEMMAX_TEST_WRITE_LOG=path, a Python audit hook appends to that file every
path opened for writing, created, renamed to or removed (files written by native code, such as
tensorstore under checkpoints/, do not raise audit events).
"""

import asyncio
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pause_checkpoint_write(step: str, marker: str):
  from orbax.checkpoint._src.path import atomicity

  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def paused(self):
    if self.get_final().name == step:
      with open(marker + ".tmp", "w") as f:
        f.write(str(self.get()))
      os.replace(marker + ".tmp", marker)
      await asyncio.sleep(3600)
    return await finalize(self)

  atomicity.AtomicRenameTemporaryPath.finalize = paused


def _log_writes(path: str):
  log = open(path, "a", buffering=1)  # opened before the hook: writing to it raises no event
  # os.open flags that write: O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND.
  writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

  def hook(event, args):
    if event == "open" and args[0] is not None and not isinstance(args[0], int):
      mode, flags = args[1] or "", args[2] or 0
      if any(c in str(mode) for c in "wax+") or flags & writing:
        log.write(f"open\t{os.path.abspath(os.fsdecode(args[0]))}\n")
    elif event in (
      "os.rename",
      "os.replace",
      "os.mkdir",
      "os.remove",
      "os.rmdir",
      "shutil.rmtree",
      "os.symlink",
      "os.link",
      "shutil.copyfile",
      "shutil.move",
    ):
      two = event in (
        "os.rename",
        "os.replace",
        "os.symlink",
        "os.link",
        "shutil.copyfile",
        "shutil.move",
      )
      target = args[1] if two else args[0]
      # Names relative to a directory fd come from shutil.rmtree, whose root is logged itself.
      relative = event in ("os.remove", "os.rmdir", "os.mkdir") and args[-1] not in (None, -1)
      if not isinstance(target, int) and not relative:
        log.write(f"{event}\t{os.path.abspath(os.fsdecode(target))}\n")

  sys.addaudithook(hook)


if __name__ == "__main__":
  if os.environ.get("GEMMAX_TEST_WRITE_LOG"):
    _log_writes(os.environ["GEMMAX_TEST_WRITE_LOG"])
  if os.environ.get("GEMMAX_TEST_PAUSE_SAVE_STEP"):
    _pause_checkpoint_write(
      os.environ["GEMMAX_TEST_PAUSE_SAVE_STEP"], os.environ["GEMMAX_TEST_PAUSE_MARKER"]
    )
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  import importlib  # noqa: E402

  from absl import flags  # noqa: E402
  from gemmax import cli  # noqa: E402

  script = os.environ.get("GEMMAX_TEST_SCRIPT", "finetune")
  module = importlib.import_module(script)  # defines --config
  flags.mark_flags_as_required(["config"])
  cli.run(module.main, f"{script}.py")
