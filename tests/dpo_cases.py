"""Runs experiments/dpo.py's main in one process for many argument lists (tests/test_dpo_cli.py's
bad inputs): `python dpo_cases.py cases.json results.json`, cases a {name: argv} object, results
{name: [exit status, stderr, stdout]}. One process instead of one per case: JAX loads once.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  import dpo  # noqa: E402
  from finetune_assets import invoke  # noqa: E402

  with open(sys.argv[1]) as f:
    cases = json.load(f)
  results = {name: invoke(dpo.main, argv, "dpo.py") for name, argv in cases.items()}
  with open(sys.argv[2], "w") as f:
    json.dump(results, f)
