"""Build the five teaching notebooks: write each .ipynb from the cell sources in notebooks/cells_*.py and
execute it top to bottom, so the stored notebook carries its outputs (tables, figures) for reading online.

Run from anywhere:
    python notebooks/build_notebooks.py            # all five (make notebooks); ~1-2 min each on 2 CPU cores
    python notebooks/build_notebooks.py 3 4        # only notebooks 3 and 4
Each notebook runs with notebooks/ as its working directory, in a kernel started from THIS interpreter
(the venv's), so it sees the same torch. Stage outputs under runs/ (runs/02_pgd, runs/03_adv_train,
runs/04_eval) are reused when present; what a notebook has to train itself goes to runs/notebooks/ and is
reused by later notebooks and later builds. Environment variables (see notebooks/nbsetup.py):
    SAT_RUNS_DIR        where the notebooks write (default runs/notebooks)
    SAT_STAGE_RUNS      where they look for stage outputs (default runs; an empty folder = "nothing run yet")
    SAT_NOTEBOOK_QUICK  1 = shrink everything (the test suite's setting; never commit such a build)

Edit the cells in notebooks/cells_*.py, not the .ipynb files: a rebuild overwrites them.
"""
import argparse
import atexit
import importlib
import os
import shutil
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOKS = [   # (file name, module holding its cells)
    ("01_adversarial_examples_pgd.ipynb", "cells_01_pgd"),
    ("02_why_relu_hurts.ipynb", "cells_02_gradients"),
    ("03_sat_results.ipynb", "cells_03_results"),
    ("04_evaluating_robustness.ipynb", "cells_04_evaluation"),
    ("05_scaling.ipynb", "cells_05_scaling"),
]
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def use_this_interpreter():
    """Make kernel 'python3' mean THIS interpreter: write ipykernel's kernelspec for sys.executable into a
    temporary folder and put it first on JUPYTER_PATH (the first kernelspec found wins). Nothing is installed
    anywhere, and a user's own 'python3' kernelspec pointing at another Python cannot take over."""
    if os.environ.get("_SAT_KERNEL_DIR"):
        return
    from ipykernel.kernelspec import write_kernel_spec
    root = tempfile.mkdtemp(prefix="sat_kernels_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    write_kernel_spec(os.path.join(root, "kernels", "python3"))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in [root, os.environ.get("JUPYTER_PATH", "")] if p)
    os.environ["_SAT_KERNEL_DIR"] = root


def build(cells_module):
    """A new notebook (nbformat v4) from a module's CELLS list of ("markdown"|"code", source) pairs."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    cells = importlib.import_module(cells_module).CELLS
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in cells:
        src = src.strip("\n")
        nb.cells.append(nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src))
    return nb


def execute(nb, cwd, timeout=600):
    """Run every cell in a fresh kernel with working directory `cwd`; raises on the first failing cell.
    Returns the seconds it took. The kernel inherits this process's environment (SAT_* variables)."""
    use_this_interpreter()
    t0 = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}},
                   record_timing=False).execute()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)   # as stored: the generic name, not this machine's paths
    return time.time() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description="Build and execute the notebooks (see the module docstring).")
    p.add_argument("which", nargs="*", help="notebook numbers (1-5) or file names; default: all")
    args = p.parse_args(argv)
    chosen = [(f, m) for i, (f, m) in enumerate(NOTEBOOKS, 1)
              if not args.which or str(i) in args.which or f in args.which]
    if not chosen:
        p.error(f"no notebook matches {args.which}; accepted: 1-{len(NOTEBOOKS)} or {', '.join(f for f, _ in NOTEBOOKS)}")
    timings = []
    for fname, module in chosen:
        nb = build(module)
        print(f"executing {fname} ...", flush=True)
        try:
            secs = execute(nb, HERE)
        except Exception as e:   # CellExecutionError carries the cell's traceback; keep the stored notebook as it was
            print(f"error: {fname} failed; the stored notebook was not changed.\n{e}", file=sys.stderr)
            sys.exit(1)
        nbformat.write(nb, os.path.join(HERE, fname))
        timings.append((fname, secs))
        print(f"  wrote notebooks/{fname} in {secs:.0f} s", flush=True)
    print("\n".join(f"{f:<40} {s:6.0f} s" for f, s in timings))


if __name__ == "__main__":
    main()
