"""Where gemmax keeps what it fetches and compiles: `$GEMMAX_CACHE`, default `~/.cache/gemmax`
(`models/` the registry's files, `corpora/` built corpora, `xla/` compiled programs)."""

import os


def cache_dir() -> str:
  return os.path.expanduser(os.environ.get("GEMMAX_CACHE") or os.path.join("~", ".cache", "gemmax"))
