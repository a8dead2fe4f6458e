"""Write the course bundle a student gets: this repo without the notebooks' answers.

    python tools/course_bundle.py OUT_DIR          # a folder, OUT_DIR/sat-course/ (must not exist yet)
    python tools/course_bundle.py OUT_DIR --zip    # and OUT_DIR/sat-course.zip beside it

What goes in: every file git tracks (so nothing of runs/ or .venv; in a copy without git, every file but those
.gitignore names), as it is in the working tree, except
  notebooks/NN_name.ipynb        the full editions (solutions and their outputs): left out; the student editions
                                 notebooks/student/NN_name.ipynb stay, and the links to the full editions in the
                                 markdown files point to the student editions instead
  notebooks/NN_name.py           the jupytext sources: written again without the cells tagged "solution"
  tests/test_notebooks.py        they compare the full editions with their sources, and answer every exercise
  tests/test_checks.py           (right and wrong): not for students
What a bundle cannot hide: the repo's own code is the reference the exercises re-implement (02_pgd.pgd,
01_activations' smooth backward, 03_adv_train's training step, 04_eval.bootstrap_diff, and notebooks/checks.py's
references). The checks refuse a call to a stage's function as an answer; a copied function they cannot tell
from a written one (docs/COURSE.md, "Grading").

Run it after `make notebooks`, from a checkout whose notebooks are committed: it reads what git tracks. Takes a
second or two. tests/test_course_bundle.py builds a bundle and checks the above.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "sat-course"
FULL_EDITION = re.compile(r"^notebooks/(0\d_[A-Za-z0-9_]+)\.ipynb$")
SOURCE = re.compile(r"^notebooks/(0\d_[A-Za-z0-9_]+)\.py$")
LEFT_OUT = {"tests/test_notebooks.py", "tests/test_checks.py"}
SOLUTION = "solution"   # the tag of the answer cells (the Makefile's TagRemovePreprocessor removes the same)


NOT_SHIPPED = {".git", ".venv", "runs", "data", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".whl"}


def tracked_files():
    """The files git tracks; in a copy without git (a downloaded zip), every file but what .gitignore names."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
        return [f for f in out.split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]
    except (OSError, subprocess.CalledProcessError):
        found = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = sorted(d for d in dirs if d not in NOT_SHIPPED)
            found += [os.path.relpath(os.path.join(folder, f), ROOT).replace(os.sep, "/") for f in sorted(files)
                      if not f.endswith(".pyc")]
        return found


def without_solutions(path):
    """The jupytext source at `path` as text, without its cells tagged "solution"."""
    import jupytext
    nb = jupytext.read(path)
    nb.cells = [c for c in nb.cells if SOLUTION not in c.metadata.get("tags", [])]
    return jupytext.writes(nb, fmt="py:percent")


def point_to_student_editions(text, md_path):
    """Links to a full edition (notebooks/NN_name.ipynb, or NN_name.ipynb inside notebooks/) -> the student edition."""
    prefix = "" if md_path.startswith("notebooks/") else "notebooks/"
    return re.sub(r"\((" + re.escape(prefix) + r")(0\d_[A-Za-z0-9_]+\.ipynb)\)", r"(\1student/\2)", text)


def build(out_dir, make_zip=False):
    dest = os.path.join(out_dir, NAME)
    if os.path.exists(dest):
        raise SystemExit(f"{dest} exists already: remove it or give another folder")
    kept, stripped, left_out = 0, 0, []
    for rel in tracked_files():
        if FULL_EDITION.match(rel) or rel in LEFT_OUT:
            left_out.append(rel)
            continue
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if SOURCE.match(rel):
            with open(target, "w") as f:
                f.write(without_solutions(os.path.join(ROOT, rel)))
            stripped += 1
        elif rel.endswith(".md"):
            with open(os.path.join(ROOT, rel)) as f:
                text = f.read()
            with open(target, "w") as f:
                f.write(point_to_student_editions(text, rel))
        else:
            shutil.copy2(os.path.join(ROOT, rel), target)
        kept += 1
    print(f"{dest}: {kept} files ({stripped} notebook sources without their solution cells); left out: "
          f"{', '.join(left_out)}")
    if make_zip:
        archive = shutil.make_archive(dest, "zip", out_dir, NAME)
        print(f"{archive}: the same, zipped")
    return dest


def main(argv=None):
    p = argparse.ArgumentParser(description="Write the students' course bundle: the repo without the notebooks' answers.")
    p.add_argument("out_dir", help="the folder to write sat-course/ into (created if needed)")
    p.add_argument("--zip", action="store_true", help="also write sat-course.zip beside it")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    build(args.out_dir, args.zip)


if __name__ == "__main__":
    sys.exit(main())
