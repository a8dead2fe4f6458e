"""The copy-paste snippets (docs/SNIPPETS.md) run as written from a folder outside the clone: each ```python block of
docs/SNIPPETS.md that uses this repo (its first line says so), with its REPO placeholder replaced by this clone's path,
runs with this Python in a temporary folder (no PYTHONPATH), and exits 0. A snippet that works only from inside the
clone fails here. The blocks that need torch alone are run by tests/test_copy_contract.py, without the repo."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

PLACEHOLDER = "/path/to/SmoothAdversarialTraining"   # what docs/SNIPPETS.md tells a reader to replace


def python_blocks(text):
    """The contents of every ```python block of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


BLOCKS = python_blocks(open(os.path.join(ROOT, "docs", "SNIPPETS.md")).read())
REPO_BLOCKS = [b for b in BLOCKS if not b.startswith("# torch alone")]


def test_the_snippets_are_found():
    assert len(BLOCKS) >= 3, "the copy-paste snippets of docs/SNIPPETS.md were not found"
    assert all(b.startswith(("# torch alone", "# uses this repo")) for b in BLOCKS), \
        "each snippet says on its first line whether it needs torch alone or uses this repo"


@pytest.mark.parametrize("i", range(len(REPO_BLOCKS)))
def test_snippet_runs_from_outside_the_clone(i, tmp_path, warm_python):
    code = REPO_BLOCKS[i]
    assert f'REPO = "{PLACEHOLDER}"' in code and "sys.path.insert(0, REPO)" in code, \
        "each snippet that uses the repo shows the line that makes the stages importable"
    (tmp_path / "snippet.py").write_text(code.replace(PLACEHOLDER, ROOT))
    env = warm_python(os.environ)   # PYTHONPATH: tests/smoke only, the warm Python's (the repo is not on it)
    r = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"docs/SNIPPETS.md snippet {i + 1} failed:\n{code}\n{r.stderr}"
    assert not (tmp_path / "runs").exists(), "a snippet wrote outputs into the reader's folder"
