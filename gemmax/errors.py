"""Exceptions a user can act on, kept apart from bugs.

Every problem with a config, file, checkpoint, tokenizer or dataset raises a `GemmaxError` (a
`ValueError`, so `except ValueError` keeps working) whose message names what is wrong: the file,
config key, tensor or row. The command-line scripts (gemmax/cli.py) print it as one line and exit
with status 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations


class GemmaxError(ValueError):
  """A user error: bad config, file, checkpoint, tokenizer or data. The message says which."""

  def __str__(self):  # a subclass that is also a KeyError must not get KeyError's quoting
    return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigError(GemmaxError):
  """A config key or value that cannot work."""


class MissingTensorError(GemmaxError, KeyError):
  """A checkpoint lacks a tensor the model needs (also a KeyError: a lookup that failed)."""


class MissingTokenError(GemmaxError, KeyError):
  """A tokenizer lacks a token a template or config names (also a KeyError: a failed lookup)."""


class WorkdirError(GemmaxError):
  """The workdir cannot be used: not writable, or it holds another run's outputs."""


class NonFiniteError(GemmaxError):
  """NaN/Inf loss or gradients with halting switched on, or about to be checkpointed."""


class Preempted(Exception):
  """Training stopped on SIGTERM/SIGINT after finishing a step and writing a checkpoint.

  Not a user error: the CLI exits with status 75 (EX_TEMPFAIL) and the same command resumes.
  """

  def __init__(self, step: int, directory: str, signal_name: str = "SIGTERM"):
    self.step, self.directory, self.signal_name = step, directory, signal_name
    super().__init__(
      f"{signal_name}: stopped after step {step}; checkpoint in {directory}; "
      "run the same command again to resume"
    )
