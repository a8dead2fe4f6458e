"""tools/course_bundle.py writes what a student gets: the student editions, the sources without their solution
cells, no full edition, no answer anywhere, and links that still resolve."""
import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "course_bundle.py"), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return os.path.join(out, "sat-course")


def names():
    return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "notebooks", "0*_*.py")))


def test_bundle_has_the_student_editions_and_no_full_edition(bundle):
    assert names()
    for name in names():
        assert os.path.isfile(os.path.join(bundle, "notebooks", "student", name + ".ipynb"))
        assert not os.path.exists(os.path.join(bundle, "notebooks", name + ".ipynb"))
    for rel in ("tests/test_notebooks.py", "tests/test_checks.py"):
        assert not os.path.exists(os.path.join(bundle, rel))
    for rel in ("02_pgd.py", "notebooks/checks.py", "notebooks/nbsetup.py", "Makefile", "LICENSE"):
        assert os.path.isfile(os.path.join(bundle, rel)), rel


def test_sources_are_the_student_editions(bundle):
    """Each source in the bundle has exactly the student edition's cells: the solution cells are gone, nothing else."""
    for name in names():
        src = jupytext.read(os.path.join(bundle, "notebooks", name + ".py"))
        student = nbformat.read(os.path.join(ROOT, "notebooks", "student", name + ".ipynb"), as_version=4)
        assert [(c.cell_type, c.source) for c in src.cells] == [(c.cell_type, c.source) for c in student.cells], name


def test_no_solution_cell_anywhere(bundle):
    """No file of the bundle holds the text of a solution cell (the longer ones: a short one such as a lone
    function call also appears in the exercises)."""
    answers = [c.source.strip() for name in names() for c in jupytext.read(os.path.join(ROOT, "notebooks", name + ".py")).cells
               if "solution" in c.metadata.get("tags", []) and len(c.source.strip()) > 80]
    assert answers
    for path in glob.glob(os.path.join(bundle, "**", "*"), recursive=True):
        if os.path.isfile(path) and path.endswith((".py", ".ipynb", ".md", ".txt", ".toml")):
            text = open(path, encoding="utf-8").read()
            if path.endswith(".ipynb"):   # cell sources are stored as JSON lists of lines
                text = "\n".join("".join(c.source) for c in nbformat.reads(text, as_version=4).cells)
            leaked = [a[:60] for a in answers if a in text]
            assert not leaked, f"{os.path.relpath(path, bundle)} holds solution cells: {leaked}"


def test_links_resolve(bundle):
    """Every relative link of the bundle's markdown files points to a file or folder in the bundle."""
    broken = []
    for md in glob.glob(os.path.join(bundle, "**", "*.md"), recursive=True):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", open(md, encoding="utf-8").read()):
            if not re.match(r"[a-z]+:", target) and not os.path.exists(os.path.join(os.path.dirname(md), target)):
                broken.append(f"{os.path.relpath(md, bundle)} -> {target}")
    assert not broken, broken
