"""Every notebook in colab/ runs top to bottom on CPU with its SMALL switch on (as CI runs them)."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))


def test_there_are_notebooks():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert {"quickstart.ipynb", "finetune.ipynb", "distillation.ipynb", "tpu.ipynb"} <= names


# These load the registry's real model (fetched by .ci/run before the slow step).
REAL_MODEL = {"quickstart.ipynb", "finetune.ipynb"}


@pytest.mark.parametrize(
  "path",
  [
    pytest.param(p, marks=pytest.mark.slow) if os.path.basename(p) in REAL_MODEL else p
    for p in NOTEBOOKS
  ],
  ids=os.path.basename,
)
def test_notebook_runs(path, monkeypatch, tmp_path):
  if not os.path.isfile(os.path.join(ROOT, "checkpoints", "gemmax-tiny", "model.safetensors")):
    pytest.fail("checkpoints/gemmax-tiny/model.safetensors is missing")
  monkeypatch.setenv("GEMMAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("TQDM_DISABLE", "1")
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:  # a notebook must be committed without outputs
    assert not cell.get("outputs"), f"{os.path.basename(path)}: commit it with outputs cleared"
  # A scratch working directory that sees the bundled model and data: the notebooks write their
  # runs/ there, so a stale store or workdir from an earlier run of the checkout cannot interfere.
  for name in ("checkpoints", "data"):
    os.symlink(os.path.join(ROOT, name), tmp_path / name)
  NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  ).execute()
