"""Pieces shared by the cell lists of the notebooks (see build_notebooks.py)."""


def md(src):
    return ("markdown", src)


def code(src):
    return ("code", src)


# The first code cell of every notebook: make the repo importable, whatever the working directory.
SETUP = code(r'''
import os, sys
# The repo root holds 01_activations.py: it is the parent of notebooks/ (this notebook's working directory).
# The tests run the notebooks from a temporary folder and name the root in $SAT_REPO_ROOT.
ROOT = os.environ.get("SAT_REPO_ROOT") or next(
    (d for d in (os.path.dirname(os.getcwd()), os.getcwd()) if os.path.isfile(os.path.join(d, "01_activations.py"))), None)
assert ROOT, "start this notebook from the repo's notebooks/ folder, or set SAT_REPO_ROOT to the repo root"
sys.path[:0] = [ROOT, os.path.join(ROOT, "notebooks")]
import nbsetup as nb   # paths, quick mode, table/figure helpers: notebooks/nbsetup.py
print(f"quick mode: {nb.QUICK}; models trained here go to {os.path.relpath(nb.OUT, ROOT)}/")
''')
