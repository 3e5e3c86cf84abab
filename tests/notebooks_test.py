"""Executes the notebooks top to bottom in their tiny setting.

Each notebook runs in a fresh IPython kernel of this very interpreter (a
kernel spec written to a temporary folder, so a fresh virtualenv needs no
`jupyter kernelspec install`), from the `notebooks/` folder, with
`LOWRANK_DISTILL_NOTEBOOK_TINY=1`. A failing cell fails the test with its
traceback.
"""

import os
import pathlib

import nbformat
import pytest
from ipykernel import kernelspec
from nbclient import NotebookClient

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
# Every notebook under notebooks/ must be listed here.
NOTEBOOKS = ["quickstart.ipynb", "trajectory_matching.ipynb"]
TINY_ENV = "LOWRANK_DISTILL_NOTEBOOK_TINY"
KERNEL_NAME = "lowrank-distill-test"
CELL_TIMEOUT_S = 600


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
  """A kernel spec for `sys.executable`, found through JUPYTER_PATH."""
  prefix = tmp_path / "jupyter"
  kernelspec.install(kernel_name=KERNEL_NAME, prefix=str(prefix))
  monkeypatch.setenv(
    "JUPYTER_PATH",
    os.pathsep.join(
      filter(
        None,
        [str(prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")],
      )
    ),
  )
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  monkeypatch.setenv("MPLBACKEND", "agg")
  # The notebooks' temporary workdirs land here and are cleaned with it.
  (tmp_path / "tmp").mkdir()
  monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
  # t-SNE's OpenMP threads spin for a long time on a busy 2-core machine
  # (18 s instead of 2 s for 230 points); XLA does not use OpenMP.
  monkeypatch.setenv("OMP_NUM_THREADS", "1")
  monkeypatch.setenv(TINY_ENV, "1")
  return KERNEL_NAME


def test_every_notebook_is_listed():
  found = sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb"))
  assert found == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_and_has_no_outputs(name):
  notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, kernel_name, tmp_path):
  notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
  client = NotebookClient(
    notebook,
    kernel_name=kernel_name,
    timeout=CELL_TIMEOUT_S,
    resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
  )
  try:
    client.execute()
  finally:
    nbformat.write(notebook, tmp_path / name)
  errors = [
    output
    for cell in notebook.cells
    if cell.cell_type == "code"
    for output in cell.outputs
    if output.output_type == "error"
  ]
  assert not errors
