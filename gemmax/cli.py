"""How every experiments/*.py script starts, fails and stops.

    if __name__ == "__main__":
      cli.run(main)                 # absl scripts (ml_collections --config)
      cli.run_plain(main)           # argparse scripts

Exit statuses:
  0   done.
  2   a user error (bad config key or value, missing/corrupt file, checkpoint, tokenizer, data,
      workdir): one line `<script>: error: <message>` on stderr, no traceback, and nothing in an
      existing workdir overwritten. `--debug` shows the traceback instead.
  75  preempted (EX_TEMPFAIL): SIGTERM or SIGINT arrived, the current step finished and a
      checkpoint was written; run the same command again to resume from it.
  1   anything else: a bug, with its traceback.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable

from absl import app, flags

from gemmax import compile_cache, host_memory
from gemmax.errors import GemmaxError, Preempted

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later"
# User errors: gemmax raises GemmaxError (a ValueError) wherever it reads or checks what a user
# gave it; OSError covers files the OS refuses. Any other exception is a bug: exit 1, traceback.
USER_ERRORS = (GemmaxError, OSError)

_DEBUG = flags.DEFINE_bool("debug", False, "Show Python tracebacks for user errors too.")


def one_line(e: BaseException) -> str:
  """The message of `e` on one line (KeyError's quotes dropped, whitespace runs collapsed)."""
  msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else e
  text = " ".join(str(msg).split())
  if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
    # OSError's own text is "[Errno 2] No such file or directory: 'x'": keep it, drop the errno.
    text = re.sub(r"^\[Errno \d+\] ", "", text)
  return text or type(e).__name__


def _flag_error(e: BaseException) -> str:
  """One line for a failure while parsing flags / loading the --config file."""
  text = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
  if "Traceback (most recent call last)" in text:  # config_flags embeds the config file's traceback
    head = text.split(":", 1)[0]
    frames = re.findall(r'File "([^"]+)", line (\d+)', text)
    last = [l for l in text.strip().splitlines() if l.strip()][-1].strip()
    user = [f for f in frames if "site-packages" not in f[0]]
    where = f" ({user[-1][0]}, line {user[-1][1]})" if user else ""
    return f"{head}: {last}{where}"
  if isinstance(e, SyntaxError):
    return f"{e.filename}, line {e.lineno}: {e.msg}"
  if isinstance(e, KeyError):  # ml_collections: "'optimzer'\nDid you mean "optimizer" ...?"
    return "unknown config key " + "; ".join(l.strip() for l in text.splitlines() if l.strip())
  return " ".join(text.split())


def fail(name: str, message: str, status: int = EXIT_USER_ERROR):
  print(f"{name}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _debug() -> bool:
  try:
    return bool(_DEBUG.value)
  except flags.UnparsedFlagAccessError:
    return "--debug" in sys.argv


def guard(main: Callable, name: str) -> Callable:
  """`main` with user errors turned into one line + exit 2 and preemption into exit 75."""

  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except Preempted as e:
      print(f"{name}: preempted: {e}", file=sys.stderr, flush=True)
      sys.exit(EXIT_PREEMPTED)
    except USER_ERRORS as e:
      if _debug():
        raise
      fail(name, one_line(e))

  return wrapped


def parse_flags(argv: list[str], name: str) -> list[str]:
  """absl flag parsing whose errors (unknown key, bad value, broken config file) are one line."""
  try:
    return flags.FLAGS(argv)
  except (
    flags.Error,
    AttributeError,
    KeyError,
    OSError,
    SyntaxError,
    TypeError,
    ValueError,
  ) as e:  # AttributeError: ml_collections on an unknown --config.a.b
    if "--debug" in argv:
      raise
    fail(name, _flag_error(e))


def run(main: Callable, name: str | None = None) -> None:
  """`app.run(main)` with one-line user errors, `--debug`, and the exit statuses above."""
  name = name or os.path.basename(sys.argv[0])
  host_memory.keep_on_cpu(relaunch=True)  # before main starts JAX: see gemmax.host_memory
  compile_cache.enable()  # a second run of a job loads its programs instead of compiling them
  fv = flags.FLAGS
  if "config" in fv and fv["config"].default is None and not fv["config"].validators:
    flags.mark_flag_as_required("config")  # ml_collections' --config: fail in one line without it
  app.run(guard(main, name), flags_parser=lambda argv: parse_flags(argv, name))


def run_plain(main: Callable, name: str | None = None) -> None:
  """For argparse scripts: `main()` under `guard` (the script accepts `--debug` itself)."""
  name = name or os.path.basename(sys.argv[0])
  host_memory.keep_on_cpu(relaunch=True)
  guard(main, name)()
