"""SIGTERM / SIGINT as a request to stop at the next step boundary.

Cloud schedulers send SIGTERM before preempting a VM, and Ctrl-C sends SIGINT. Inside
`StopSignals()` either one only sets `.requested` (the signal's name); the training loop finishes
its step, writes a checkpoint and raises `gemmax.errors.Preempted`. A second signal of the same kind
acts as usual (SIGINT raises KeyboardInterrupt, SIGTERM kills), for when waiting is not an option.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
  """Context manager; `.requested` is None, or "SIGTERM" / "SIGINT" once one has arrived."""

  def __init__(self):
    self.requested: Optional[str] = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name
    signal.signal(signum, _usable(self._previous.get(signum)))  # the next one is not held

  def __enter__(self):
    # Signal handlers can only be installed from the main thread; elsewhere signals act as usual.
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, _usable(handler))
    self._previous = {}
    return False


def _usable(handler):
  # signal.signal returns None for handlers not installed from Python; restore the default then.
  return signal.SIG_DFL if handler is None else handler
