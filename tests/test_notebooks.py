"""The notebooks: each stored notebooks/*.ipynb runs top to bottom without an error, and matches its cell sources.

Quick mode (SAT_NOTEBOOK_QUICK=1) shrinks every computation in the notebooks (fewer epochs, images, attack
steps). Each notebook is read from notebooks/ and executed in memory by nbclient, from a temporary working
directory, and never written back; what the notebooks train goes to a temporary SAT_RUNS_DIR shared by the five
(so notebooks 2-4 reuse the ReLU model notebook 1 trained), never into the repo's runs/. The stage outputs they
would reuse are looked for in an empty folder (SAT_STAGE_RUNS), so the test runs the "nothing there yet" path
whatever runs/ holds. About 2-3 min for the five on 2 CPU cores.
"""
import glob
import importlib.util
import os

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))


def load_builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", os.path.join(NOTEBOOK_DIR, "build_notebooks.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def quick_env(tmp_path_factory):
    """Quick mode, a temporary runs folder, the repo root named for notebooks run from elsewhere; the kernel
    inherits these. Every variable is restored afterwards (JUPYTER_PATH too, which the builder extends)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SAT_NOTEBOOK_QUICK", "1")
    mp.setenv("SAT_RUNS_DIR", str(tmp_path_factory.mktemp("notebook_runs")))
    mp.setenv("SAT_STAGE_RUNS", str(tmp_path_factory.mktemp("no_stage_outputs")))   # as on a fresh clone
    mp.setenv("SAT_REPO_ROOT", ROOT)
    for name in ("JUPYTER_PATH", "_SAT_KERNEL_DIR"):
        if name in os.environ:
            mp.setenv(name, os.environ[name])
        else:
            mp.delenv(name, raising=False)
    yield
    mp.undo()


def test_every_listed_notebook_is_stored():
    builder = load_builder()
    stored = sorted(os.path.basename(p) for p in NOTEBOOKS)
    assert stored == sorted(f for f, _ in builder.NOTEBOOKS), "run: python notebooks/build_notebooks.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_stored_notebook_matches_its_cells(path):
    """The .ipynb is generated: its cells must be the ones in notebooks/cells_*.py (else: rebuild it)."""
    builder = load_builder()
    module = dict(builder.NOTEBOOKS)[os.path.basename(path)]
    expected = [(c.cell_type, c.source) for c in builder.build(module).cells]
    stored = [(c.cell_type, c.source) for c in nbformat.read(path, as_version=4).cells]
    assert stored == expected, f"{os.path.basename(path)} is stale: run python notebooks/build_notebooks.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path, quick_env, tmp_path):
    builder = load_builder()
    with open(path, "rb") as f:
        before = f.read()
    nb = nbformat.read(path, as_version=4)
    builder.execute(nb, cwd=str(tmp_path), timeout=600)   # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    with open(path, "rb") as f:
        assert f.read() == before, "the stored notebook must not change"
