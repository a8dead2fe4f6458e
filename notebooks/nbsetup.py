"""Plumbing shared by the notebooks: where things are, how big to make the work, how to show a result.

No algorithm of the paper lives here (those are in the numbered stages, which the notebooks import). Only:
  ROOT        the repo root
  STAGE_RUNS  the stages' outputs, read when present and never written by a notebook: $SAT_STAGE_RUNS if set
              (the tests point it at an empty folder, so they never depend on what runs/ holds), else ROOT/runs.
  OUT         where the notebooks write what they train: $SAT_RUNS_DIR if set (the tests point it at a
              temporary folder), else ROOT/runs/notebooks. Runs are named by their settings and shared
              between notebooks, so a model trained by notebook 1 is reused by notebooks 2-4.
  QUICK       True when $SAT_NOTEBOOK_QUICK=1 (tests/test_notebooks.py): every computation shrinks further.
and the answer key's stamp (stamp(), code_digest()): the last cell of each full edition prints which code it ran
on, so that tests/test_notebooks.py can tell a stored output made by older code from one made by today's.
"""
import ast
import contextlib
import hashlib
import html
import importlib
import io
import os
import sys

import matplotlib

matplotlib.use("Agg")   # figures are shown as PNG images by show(), whatever backend the kernel prefers
import torch  # noqa: E402

ROOT = os.path.abspath(os.environ.get("SAT_REPO_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
STAGE_RUNS = os.path.abspath(os.environ.get("SAT_STAGE_RUNS") or os.path.join(ROOT, "runs"))
OUT = os.path.abspath(os.environ.get("SAT_RUNS_DIR") or os.path.join(ROOT, "runs", "notebooks"))
QUICK = os.environ.get("SAT_NOTEBOOK_QUICK", "") not in ("", "0")

# The digits tensors are tiny (8x8): a second intra-op thread gains nothing, and on a CPU shared with other
# jobs two threads per process can make each attack step 10x slower (threads waiting on each other).
torch.set_num_threads(1)

import sat_data  # noqa: E402
import sat_models  # noqa: E402


def stage(name):
    """A numbered stage as a module: stage('02_pgd'). (`import 02_pgd` is not valid Python syntax.)"""
    return importlib.import_module(name)


def size(full, quick):
    """`full` normally, `quick` under SAT_NOTEBOOK_QUICK=1."""
    return quick if QUICK else full


def stage_output(*parts):
    """Path of a stage output below ROOT/runs if that file exists, else None."""
    path = os.path.join(STAGE_RUNS, *parts)
    return path if os.path.isfile(path) else None


def test_set(n):
    """The first n images of the digits test split: x (n, 1, 8, 8) in [0, 1], y (n,)."""
    x, y = sat_data.digits_tensors("test")
    return x[:n], y[:n]


def milestones(epochs):
    """Learning-rate drops for a run of `epochs`: stage 03's digits preset [15, 25] for 30 epochs, else the same
    proportions (1/2 and 5/6 of the run)."""
    return [15, 25] if epochs == 30 else sorted({max(1, epochs // 2), max(1, (5 * epochs) // 6)})


def train_digits(name, verbose=False, **overrides):
    """Train stage 03's digits preset with `overrides` into OUT/name, or reuse it if it finished there before.
    Returns (model in eval mode, path of final.pt). Prints one summary line (the full per-epoch table of
    stage 03 if verbose)."""
    train_mod = stage("03_adv_train")
    out = os.path.join(OUT, name)
    cfg = train_mod.preset_config("digits", out=out, **overrides)
    final = os.path.join(out, "final.pt")
    reused = os.path.isfile(final)
    # an interrupted earlier run leaves checkpoint.pt without final.pt: start it again from scratch
    force = not reused and os.path.isfile(os.path.join(out, "checkpoint.pt"))
    if verbose and not reused:
        path = train_mod.train(cfg, force=force, quiet=True)
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            path = train_mod.train(cfg, force=force, quiet=True)
    model, ckpt = sat_models.model_from_checkpoint(path)
    last = ckpt["metrics"]["history"][-1]
    secs = sum(r["seconds"] for r in ckpt["metrics"]["history"])
    print(f"{name}: {'reused' if reused else 'trained'} {os.path.relpath(path, ROOT)} ({ckpt['epoch']} epochs, {secs:.0f} s); "
          f"check set: clean {100 * last['check_clean_acc']:.1f}%, PGD-10 {100 * last['check_pgd10_acc']:.1f}%")
    return model, path


def adv_model(act="relu", smooth_grad="none", epochs=None):
    """An adversarially trained digits model (stage 03's preset: PGD-1, eps 64/255), seed 0.
    Stage 03's own run runs/03_adv_train/digits_<act>[_sg-<mode>]_s0 if it exists (30 epochs), else one
    trained here with `epochs` (default: size(30, 3)) into OUT. Returns (model, path, source)."""
    sg = f"_sg-{smooth_grad}" if smooth_grad != "none" else ""
    found = stage_output("03_adv_train", f"digits_{act}{sg}_s0", "final.pt")
    if found:
        model, ckpt = sat_models.model_from_checkpoint(found)
        print(f"digits_{act}{sg}: stage 03's run {os.path.relpath(found, ROOT)} ({ckpt['epoch']} epochs)")
        return model, found, "stage 03"
    epochs = epochs or size(30, 3)
    model, path = train_digits(f"digits_{act}{sg}_e{epochs}", act=act, smooth_grad=smooth_grad,
                               epochs=epochs, milestones=milestones(epochs))
    return model, path, "this notebook"


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# ----------------------------------------------------------------------------------------------------
# Showing results so that they read well in the stored notebook (HTML tables, PNG figures)

def show(fig):
    """Display a matplotlib figure as a PNG and close it."""
    from IPython.display import Image, display
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buf.getvalue()))


def show_png(path):
    from IPython.display import Image, display
    display(Image(filename=path))


def table(headers, rows, floatfmt="{:.1f}"):
    """Display a table (HTML for the notebook viewer, aligned text as the plain fallback)."""
    from IPython.display import display
    cells = [[floatfmt.format(v) if isinstance(v, float) else str(v) for v in row] for row in rows]
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    text = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [list(map(str, headers))] + cells)
    display({"text/html": f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>", "text/plain": text}, raw=True)


# ----------------------------------------------------------------------------------------------------
# The answer key's stamp: which code the stored outputs of a full edition came from

def _code_without_docs(path):
    """The code of a Python file as its syntax tree, without comments and docstrings: editing those changes no
    output, so it does not make a stored output stale."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_digest(files, cells):
    """A short hash of the repo files `files` (paths relative to ROOT, their code only) and of the notebook's code
    cells `cells` (their source), in this order. The same code gives the same digest on any machine with the same
    Python minor version (ast.dump's format may change between versions)."""
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0" + _code_of(rel).encode() + b"\0")
    for cell in cells:
        h.update(cell.strip().encode() + b"\0")
    return h.hexdigest()[:16]


def _code_of(rel):
    return _code_without_docs(os.path.join(ROOT, rel))


def repo_files_imported():
    """The repo's Python files this kernel has imported (stages, support modules, notebooks/*.py, benchmarks),
    relative to ROOT, sorted."""
    found = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None) or ""
        # absolute paths only: a few modules (torch._classes) carry a bare file name that is no file
        if path.endswith(".py") and os.path.isabs(path) and path.startswith(ROOT + os.sep) and os.path.isfile(path):
            rel = os.path.relpath(os.path.abspath(path), ROOT)
            if not rel.startswith(("tests" + os.sep, ".venv" + os.sep)):
                found.add(rel.replace(os.sep, "/"))
    return sorted(found)


STAMP = "answer key: ran on code"


def stamp():
    """The last cell of each full edition: print the digest of the code this kernel ran, the repo files it
    imported and every code cell executed before this one (IPython's input history), and the Python version.
    tests/test_notebooks.py recomputes it from today's files and the notebook's source: a different digest means
    the stored outputs came from other code, and `make notebooks` must run again."""
    from IPython import get_ipython
    cells = [c for c in get_ipython().user_ns["In"][1:-1]]   # In[0] is empty; In[-1] is this cell
    files = repo_files_imported()
    print(f"{STAMP} {code_digest(files, cells)} (python {sys.version_info[0]}.{sys.version_info[1]}; "
          f"{len(cells)} cells before this one; files: {' '.join(files)})")
