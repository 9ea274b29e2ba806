"""gemmax's packages import one way: each only from packages below it in LAYERS, so there is no
cycle and no upward edge, and no module uses another package's private (_-prefixed) names.
Imports inside functions count too: a lazy import is still a dependency."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first; a package may import only from packages of a lower layer.
LAYERS = [
  {"errors", "cache"},
  {"io", "schema", "host_memory", "compile_cache", "distributed", "ops", "sharding"},
  {"cli", "models"},
  {"fetch", "quant"},
  {"peft"},
  {"data"},
  {"convert"},
  {"train", "sampling"},
  {"evals"},
  {"distill", "posttrain"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(module: str) -> str:
  """gemmax.models.config -> models (a package or top-level module of gemmax)."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "gemmax"


def _imports():
  """(importing file, its unit, imported module, the names taken from it) for every gemmax import."""
  for root, _, files in os.walk(os.path.join(ROOT, "gemmax")):
    for f in sorted(files):
      if not f.endswith(".py"):
        continue
      path = os.path.join(root, f)
      module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
      with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
      for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gemmax"):
          names = [a.name for a in node.names]
          if node.module == "gemmax":  # from gemmax import peft: the submodules are the targets
            for n in names:
              yield path, _unit(module), f"gemmax.{n}", []
          else:
            yield path, _unit(module), node.module, names
        elif isinstance(node, ast.Import):
          for a in node.names:
            if a.name.startswith("gemmax."):
              yield path, _unit(module), a.name, []


def test_every_package_has_a_layer():
  units = {_unit(m) for _, _, m, _ in _imports()} | {u for _, u, _, _ in _imports()}
  missing = sorted(units - set(RANK) - {"gemmax", "__init__"})
  assert not missing, f"add {missing} to LAYERS"


def test_imports_point_down():
  upward = []
  for path, src, target, _ in _imports():
    dst = _unit(target)
    if src == dst or src in ("gemmax", "__init__"):
      continue
    if RANK[dst] >= RANK[src]:
      upward.append(
        f"{os.path.relpath(path, ROOT)}: {src} (layer {RANK[src]}) imports {target} "
        f"(layer {RANK[dst]})"
      )
  assert not upward, "\n".join(upward)


def test_no_private_names_across_packages():
  private = [
    f"{os.path.relpath(path, ROOT)} imports {target}.{n}"
    for path, src, target, names in _imports()
    for n in names
    if n.startswith("_") and _unit(target) != src
  ]
  assert not private, "\n".join(private)
