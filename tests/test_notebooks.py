"""The notebooks: each source notebooks/NN_name.py agrees with its two committed editions, and both editions run
top to bottom.

The source is a jupytext percent script; `make notebooks` writes from it the full edition notebooks/NN_name.ipynb
(executed, stored with outputs) and the student edition notebooks/student/NN_name.ipynb (the full edition without
the cells tagged "solution", outputs cleared). The tests check that the committed editions are what `make
notebooks` makes of the committed sources (cells compared), that the solution cells are exactly the "## Solutions"
section, and that none of them reaches a student edition.

The answer key (the full editions' stored outputs) is checked without executing a full edition again:
  * each full edition ends with a stamp, printed by nbsetup.stamp(): a digest of the code it ran on (the repo
    files it imported, comments and docstrings left out, and its own code cells). The test recomputes it from
    today's files and source: a stored output made by other code (an edited stage, or an edited cell whose old
    output `jupytext --update` kept) fails it, until `make notebooks` runs again;
  * the cells tagged "deterministic" print the same in every run, quick or full (they read files in git or draw
    from a fixed seed, never a trained model): the student editions executed here hold them too, and their fresh
    outputs must equal the full edition's stored ones.

Quick mode (SAT_NOTEBOOK_QUICK=1) shrinks every computation in the notebooks (fewer epochs, images, attack
steps). Here the student editions run, each from where it is stored (as a student opens it), read from disk,
executed in memory by nbclient and never written back; what they train goes to a temporary SAT_RUNS_DIR shared by
all of them (so notebooks 2-4 reuse the ReLU model notebook 1 trained), never into the repo's runs/. The stage
outputs they would reuse are looked for in an empty folder (SAT_STAGE_RUNS), so this runs the "nothing there
yet" path whatever runs/ holds. The full editions, which add the solution cells, are not executed again here: their
stamp, which test_full_edition_ran_on_this_code recomputes, was printed by `make notebooks` after `make run` (the
path with stage outputs) at the end of a run of every cell before it on this very code, so every cell has run on
it in one of the two.
"""
import glob
import json
import os
import re
import sys

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
preprocessors = pytest.importorskip("nbconvert.preprocessors")

NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
STUDENT_DIR = os.path.join(NOTEBOOK_DIR, "student")
# the sources, found as the Makefile finds them (notebooks/0*_*.py): nbsetup.py is plumbing, not a notebook
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(NOTEBOOK_DIR, "0*_*.py")))
SOLUTION = "solution"   # the tag of the answer cells; the Makefile passes it to TagRemovePreprocessor
SOLUTIONS_HEADING = "## Solutions"
DETERMINISTIC = "deterministic"   # cells whose outputs are the same in every run: compared with the stored ones


def source(name):
    return jupytext.read(os.path.join(NOTEBOOK_DIR, name + ".py"))


def full_path(name):
    return os.path.join(NOTEBOOK_DIR, name + ".ipynb")


def student_path(name):
    return os.path.join(STUDENT_DIR, name + ".ipynb")


def cells(nb):
    """What an edition has to share with its source: each cell's type, text and tags (not its outputs or id)."""
    return [(c.cell_type, c.source, list(c.metadata.get("tags", []))) for c in nb.cells]


def is_solution(cell):
    return SOLUTION in cell.metadata.get("tags", [])


def text_output(cell):
    """What a code cell printed (stdout) and displayed as text, in order, as one string (a stream may come in
    chunks that differ from run to run)."""
    out = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream" and o.name == "stdout":
            out.append(o.text)
        elif o.output_type in ("execute_result", "display_data") and "text/plain" in o.get("data", {}):
            out.append(o.data["text/plain"] + "\n")
    return "".join(out)


def nbsetup():
    if NOTEBOOK_DIR not in sys.path:
        sys.path.insert(0, NOTEBOOK_DIR)
    import nbsetup
    return nbsetup


def execute(nb, cwd):
    """Run every cell as `make notebooks` does (kernel "python3", working directory `cwd`); raises
    CellExecutionError on the first failing cell. The kernel inherits this process's environment. (Over TCP: with
    Unix sockets, transport "ipc", the kernel, started in `cwd`, and this client looked for the sockets' relative
    paths in different folders, and the kernel never answered.)"""
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
                            record_timing=False).execute()


@pytest.fixture(scope="session")
def notebook_dirs(tmp_path_factory):
    """The runs folder every notebook of this test run shares, and an empty folder for the stage outputs: made
    once per session, so that a test of another file run in between changes nothing."""
    return str(tmp_path_factory.mktemp("notebook_runs")), str(tmp_path_factory.mktemp("no_stage_outputs"))


@pytest.fixture
def quick_env(notebook_dirs, monkeypatch):
    """Quick mode, the shared runs folder, no $SAT_REPO_ROOT (a student opening the stored file has none), and the kernel
    lookup `make notebooks` uses (JUPYTER_PREFER_ENV_PATH=1); the kernel inherits these. Restored afterwards."""
    runs, no_stage_outputs = notebook_dirs
    monkeypatch.setenv("SAT_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("SAT_RUNS_DIR", runs)
    monkeypatch.setenv("SAT_STAGE_RUNS", no_stage_outputs)   # as on a fresh clone
    monkeypatch.delenv("SAT_REPO_ROOT", raising=False)   # each edition finds the repo from where it is stored
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")


def test_every_source_has_both_editions():
    assert NAMES, "no notebook sources notebooks/0*_*.py"
    expected = [n + ".ipynb" for n in NAMES]
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb"))) == expected
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(STUDENT_DIR, "*.ipynb"))) == expected, \
        "run: make notebooks"


@pytest.mark.parametrize("name", NAMES)
def test_full_edition_matches_its_source(name):
    stored = nbformat.read(full_path(name), as_version=4)
    assert cells(stored) == cells(source(name)), (
        f"notebooks/{name}.ipynb and its source notebooks/{name}.py differ: after editing the .py run "
        f"`make notebooks NB={int(name[:2])}`; after editing the .ipynb run `jupytext --sync notebooks/{name}.ipynb`")


@pytest.mark.parametrize("name", NAMES)
def test_solution_cells_are_the_solutions_section(name):
    """Tagged: the cell that opens with '## Solutions' and every cell after it (the section ends each notebook);
    untagged: everything before it, the exercises included."""
    nb = source(name)
    starts = [i for i, c in enumerate(nb.cells) if c.source.startswith(SOLUTIONS_HEADING)]
    assert len(starts) == 1, f"{name}: expected one cell opening with {SOLUTIONS_HEADING!r}, found {len(starts)}"
    assert [is_solution(c) for c in nb.cells] == [i >= starts[0] for i in range(len(nb.cells))]
    assert any("## Exercises" in c.source for c in nb.cells[:starts[0]]), f"{name}: no exercises before the solutions"


@pytest.mark.parametrize("name", NAMES)
def test_student_edition_is_the_full_edition_without_solutions(name):
    full = nbformat.read(full_path(name), as_version=4)
    answers = {c.source for c in full.cells if is_solution(c)}
    expected, _ = preprocessors.TagRemovePreprocessor(remove_cell_tags={SOLUTION}).preprocess(full, {})
    student = nbformat.read(student_path(name), as_version=4)
    assert cells(student) == cells(expected), "run: make notebooks"
    assert not any(is_solution(c) or SOLUTIONS_HEADING in c.source or c.source in answers for c in student.cells)
    # stored without outputs, so none of the results an exercise asks for is shown before the student runs it
    assert all(not c.outputs and c.execution_count is None for c in student.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", NAMES)
def test_full_edition_ran_on_this_code(name):
    """The stored outputs come from one top-to-bottom run (execution counts 1, 2, ...), not in quick mode, on
    today's code: the stamp in the last cell equals the digest of today's files and of the source's code cells."""
    full = nbformat.read(full_path(name), as_version=4)
    code = [c for c in full.cells if c.cell_type == "code"]
    rebuild = f"run `make notebooks NB={int(name[:2])}`"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"notebooks/{name}.ipynb was not executed top to bottom in one run: {rebuild}"
    assert "quick mode: False" in text_output(code[0]), f"notebooks/{name}.ipynb was executed in quick mode: {rebuild}"
    setup = nbsetup()
    stamp = next((line for line in text_output(code[-1]).splitlines() if line.startswith(setup.STAMP)), None)
    assert stamp, f"notebooks/{name}.ipynb has no stamp in its last cell (executed before the stamps existed): {rebuild}"
    m = re.match(re.escape(setup.STAMP) + r" (\w+) \(python (\d+\.\d+); \d+ cells before this one; files: (.*)\)$", stamp)
    assert m, stamp
    digest, python, files = m.group(1), m.group(2), m.group(3).split()
    if python != f"{sys.version_info[0]}.{sys.version_info[1]}":
        pytest.skip(f"stamped under Python {python}: ast.dump's format may differ in this Python")
    missing = [f for f in files if not os.path.isfile(os.path.join(ROOT, f))]
    assert not missing, f"notebooks/{name}.ipynb ran on files that are gone: {missing}: {rebuild}"
    cells = [c.source for c in source(name).cells if c.cell_type == "code"][:-1]
    assert digest == setup.code_digest(files, cells), (
        f"notebooks/{name}.ipynb's outputs came from other code than today's (a stage, a support module or a cell "
        f"changed since it was executed): {rebuild}")


def test_kernel_is_this_interpreter(quick_env, tmp_path, monkeypatch):
    """Kernel "python3" starts with the interpreter running this process (the venv's, with its torch), even when
    the user's own Jupyter folder names another Python for "python3", as a global `ipykernel install --user` does."""
    user_dir = tmp_path / "user_jupyter"
    (user_dir / "kernels" / "python3").mkdir(parents=True)
    (user_dir / "kernels" / "python3" / "kernel.json").write_text(json.dumps(
        {"argv": ["/nonexistent/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "another Python", "language": "python"}))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(user_dir))   # the user-level folder, ~/.local/share/jupyter
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    execute(nb, tmp_path)
    assert nb.cells[0].outputs[0].text.strip() == sys.executable


EDITIONS = [student_path(n) for n in NAMES]   # the full editions run in the README command test (`make notebooks`)


@pytest.mark.parametrize("path", EDITIONS, ids=lambda p: os.path.relpath(p, NOTEBOOK_DIR))
def test_notebook_runs_top_to_bottom(path, quick_env, tmp_path):
    with open(path, "rb") as f:
        before = f.read()
    nb = nbformat.read(path, as_version=4)
    folder = os.path.dirname(path)
    files_before = sorted(os.listdir(folder))
    execute(nb, folder)   # where it is stored, as JupyterLab or `jupyter nbconvert --execute` runs it
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert sorted(os.listdir(folder)) == files_before, "a notebook wrote into its own folder"
    with open(path, "rb") as f:
        assert f.read() == before, "the stored notebook must not change"
    # the answer key: the deterministic cells just run must print what the full edition stores
    name = os.path.basename(path)[:-len(".ipynb")]
    stored = {c.source: text_output(c) for c in nbformat.read(full_path(name), as_version=4).cells
              if DETERMINISTIC in c.metadata.get("tags", [])}
    fresh = {c.source: text_output(c) for c in nb.cells if DETERMINISTIC in c.metadata.get("tags", [])}
    assert fresh.keys() == stored.keys(), "run: make notebooks"
    stale = [src.splitlines()[0] for src in fresh if fresh[src] != stored[src]]
    assert not stale, (f"notebooks/{name}.ipynb stores other outputs than its code prints today, in the cells starting "
                       f"{stale}: run `make notebooks NB={int(name[:2])}`")
