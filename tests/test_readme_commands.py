"""Every command a user reads runs as written: each command of README.md, docs/SCALING.md, RESULTS.md and
docs/SNIPPETS.md (their ```bash blocks and their inline `python ...`, `make ...`, `torchrun ...` spans) and each
command in the numbered stages' docstrings.

They run in the order a reader meets them, in one scratch copy of the repo (so `runs/` fills up as it would
for a user, and a later command reads what an earlier one wrote), on tiny data this file generates:
  data/cifar-10-batches-py/   CIFAR-10 in torchvision's on-disk format, 8 random images per file
  /path/to/imagenet           -> an ImageFolder of 36 small random JPEGs in 3 classes (train/ and val/)
  /usr/share/datasets/fashion-mnist -> Fashion-MNIST's four idx .gz files, 24 train and 8 test random images
What changes, and why:
  SAT_SMOKE=1                 every run is 1 epoch of 2 tiny steps, a sweep at most 3 runs per model and seed
                              (2 seeds, 1 model), every evaluation a few images and attack steps
                              (sat_smoke.smoke_settings); the commands, flags and code paths are the real ones
  SAT_NOTEBOOK_QUICK=1        the notebooks' own quick mode (notebooks/nbsetup.py), where a command runs one
  --nproc_per_node 8 -> 2     two processes (gloo on the CPU), on one node: every torchrun runs with --standalone
                              (its rendezvous on a port the OS gives it as it binds; a port picked free beforehand
                              could be taken by the other test worker first), the multi-node flags dropped
  make -o .venv/.installed-*  the linked .venv counts as installed: make never reinstalls the suite's own venv
  tests/smoke/sitecustomize   torchvision's md5 check of the real CIFAR-10 files becomes "the file exists"; and
                              every Python process a command starts (torchrun's workers too) hands its work to a
                              fork of a warm server that has imported torch and torchvision already
                              (tests/smoke/warm_python.py: the same work, without 2 to 3.5 s of imports each)
Not run: `make test` (it is this suite); `python benchmarks/bench_gpu.py --quick`, which tests/test_benchmarks.py
runs and checks; `make notebooks`, whose full run on today's code the answer-key stamps witness
(tests/test_notebooks.py: a stamp that matches this code was printed by a kernel that had run every cell before it,
solutions included, after `make run`), while the student editions run there in quick mode. Editing a command in
the README so that it fails fails this test.
"""
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, SMOKE_DIR
from test_fashionmnist import write_fake_fashion


STAGES = ["01_activations.py", "02_pgd.py", "03_adv_train.py", "04_eval.py"]
# The pages a user reads, in three parts, each run in reading order on one worker (a test class, see conftest.py)
# so that both cores work: the README; the scaling page (CIFAR-10, ImageNet, torchrun); the results page with the
# stages' docstrings (about a third of the work each). No command of a part reads what another part wrote: each
# part runs in a scratch copy of its own (`user_dirs`), made once per worker and kept for the whole session (a
# module-scoped fixture would be made anew whenever the worker runs a test of another file between two commands).
PAGES = (("README.md",), ("docs/SCALING.md",), ("RESULTS.md", "docs/SNIPPETS.md"))
NOT_RUN = {"make test": "this test suite itself",
           "python benchmarks/bench_gpu.py --quick": "tests/test_benchmarks.py runs it (in-process) and checks its figures",
           "make notebooks": "tests/test_notebooks.py checks the stamps its full run printed on this code"}
PREFIXES = ("python ", "make ", "torchrun ")


def readme_commands(text):
    """Commands of a markdown text, in reading order: every line of its ```bash blocks (backslash
    continuations joined, comments dropped) and every inline `python|make|torchrun ...` code span."""
    cmds, in_bash, pending = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            in_bash = not in_bash and line.strip() in ("```bash", "```sh")
            continue
        if in_bash:
            line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
            elif line.strip() or pending:
                cmds.append((pending + line.strip()).strip())
                pending = ""
        else:
            cmds += [c for c in re.findall(r"`([^`]+)`", line) if c.startswith(PREFIXES)]
    return [c for c in cmds if c]


def docstring_commands(path):
    """The commands of a stage's docstring: its indented `python ...` / `torchrun ...` lines, comments cut."""
    import ast
    doc = ast.get_docstring(ast.parse(open(path).read()))
    return [re.split(r"\s{2,}#", line.strip())[0].strip() for line in doc.splitlines()
            if line.startswith("    ") and line.strip().startswith(("python ", "torchrun "))]


def all_commands():
    """(source, command, part) in reading order; the stages' docstrings belong to the last part."""
    cmds = [(page[:-3] if page == "README.md" else page, c, i) for i, pages in enumerate(PAGES) for page in pages
            for c in readme_commands(open(os.path.join(ROOT, page)).read())]
    cmds += [(s, c, len(PAGES) - 1) for s in STAGES for c in docstring_commands(os.path.join(ROOT, s))]
    seen, out = set(), []
    for src, c, part in cmds:   # a command met twice runs once, where it is first met
        if c not in NOT_RUN and c not in seen:
            seen.add(c)
            out.append((src, c, part))
    return out


COMMANDS = all_commands()


def test_the_commands_are_found():
    """The extraction itself: if it silently found nothing, every other test here would pass vacuously."""
    readme = [c for src, c, _ in COMMANDS if src == "README"]
    assert "make run" in readme and "python 04_eval.py" in readme and len(readme) >= 5
    assert any(c.startswith("torchrun --nnodes") for src, c, _ in COMMANDS if src == "docs/SCALING.md")
    assert sum(src == "RESULTS.md" for src, _, _ in COMMANDS) >= 5
    for s in STAGES:
        assert docstring_commands(os.path.join(ROOT, s)), f"no command found in {s}'s docstring"
    assert ("03_adv_train.py", "python 03_adv_train.py --seeds 15", len(PAGES) - 1) in COMMANDS   # met there first
    assert {part for _, _, part in COMMANDS} == set(range(len(PAGES)))   # every part holds commands
    assert readme_commands("```bash\npython a.py \\\n    --x 1   # note\n# only a comment\n```\n`make b` and `ls`") == \
        ["python a.py --x 1", "make b"]


def write_fake_cifar(folder, n=8):
    import pickle
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.randint(0, 10, n))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def write_fake_imagenet(root, classes=3, per_class=6):
    """Real class ids, and in val/ some of the file names RobustBench lists (for `--subset robustbench`)."""
    from PIL import Image
    import sat_report
    listed = {}
    for line in open(sat_report.ROBUSTBENCH_IDS):
        if line.strip() and not line.startswith("#"):
            listed.setdefault(line.split("/")[0], []).append(line.strip().split("/")[1])
    wnids = sorted(listed)[:classes]
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for wnid in wnids:
            d = root / split / wnid
            d.mkdir(parents=True)
            names = (listed[wnid][:per_class - 2] if split == "val" else []) + [f"img{i}.JPEG" for i in range(per_class)]
            for i, name in enumerate(names[:per_class]):
                Image.fromarray(rng.randint(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)).save(d / name)


@pytest.fixture(scope="session")
def user_dirs(tmp_path_factory):
    """user_dirs(part) -> that part's scratch copy, made the first time it is asked for."""
    made = {}

    def get(part):
        if part not in made:
            made[part] = make_user_dir(tmp_path_factory.mktemp(f"user_part{part}"))
        return made[part]
    return get


def make_user_dir(root):
    """A scratch copy of the repo (its tracked and new files, mtimes kept so that make sees the installed
    .venv as up to date), with the repo's .venv linked in and the generated data sets."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if os.path.isfile(os.path.join(ROOT, f)):
            os.makedirs(root / os.path.dirname(f), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), root / f)
    os.symlink(os.path.join(ROOT, ".venv"), root / ".venv")
    write_fake_cifar(root / "data" / "cifar-10-batches-py")
    write_fake_imagenet(root / "imagenet")
    write_fake_fashion(root / "fashion-mnist")
    return root


def shrink(cmd, root):
    """The substitutions listed in the module docstring."""
    cmd = cmd.replace("/path/to/imagenet", str(root / "imagenet"))
    cmd = cmd.replace("/usr/share/datasets/fashion-mnist", str(root / "fashion-mnist"))
    cmd = re.sub(r"--nproc_per_node \d+", "--nproc_per_node 2", cmd)
    cmd = re.sub(r" --(nnodes|node_rank|master_addr|master_port) \S+", "", cmd)
    cmd = re.sub(r"^torchrun (?!--standalone)", "torchrun --standalone ", cmd)
    return re.sub(r"^make ", "make -o .venv/.installed-run -o .venv/.installed-test ", cmd)


def command_env():
    """The environment every command runs in (the substitutions listed in the module docstring)."""
    bin_dir = os.path.dirname(sys.executable)   # the .venv's python, torchrun, ... come first on PATH
    return {**os.environ, "SAT_SMOKE": "1", "SAT_NOTEBOOK_QUICK": "1", "OMP_NUM_THREADS": "1",
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": SMOKE_DIR, "JUPYTER_CONFIG_PATH": SMOKE_DIR, "MPLBACKEND": "Agg"}


def run_as_written(source, command, user_dir, env):
    r = subprocess.run(["bash", "-c", shrink(command, user_dir)], cwd=user_dir, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f"{source}: `{command}` failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def part_class(part):
    """A test class for one part: pytest-xdist (--dist loadscope) runs a class's tests on one worker, in order."""
    cmds = [(s, c) for s, c, p in COMMANDS if p == part]

    class Part:
        @pytest.mark.parametrize("source, command", cmds, ids=[f"{s}: {c[:70]}" for s, c in cmds])
        def test_command_runs_as_written(self, source, command, user_dirs, warm_python):
            run_as_written(source, command, user_dirs(part), warm_python(command_env()))
    Part.__name__ = Part.__qualname__ = f"TestPart{part}"
    return Part


TestPart0, TestPart1, TestPart2 = (part_class(part) for part in range(len(PAGES)))


def test_the_warm_python_runs_a_command_as_python_would(warm_python, tmp_path):
    """The warm Python (tests/smoke/warm_python.py) under the commands above: a script's exit code, traceback,
    sys.argv, __file__, __name__ and working folder as the interpreter gives them, stdin passed on, `-c` and
    `-m`; work handed over (torch already imported when the script starts) unless the environment differs in a
    variable not read at run time; fresh random states; the fork killed with the waiting process. If it reported 0
    for a failing command, every command test would pass."""
    (tmp_path / "s.py").write_text(
        "import os, sys\n"
        "print(sys.argv, __file__, __name__, os.getcwd(), 'torch' in sys.modules, input())\n"
        "if sys.argv[1] == 'fail':\n    raise ValueError('boom')\n"
        "sys.exit(int(sys.argv[1]))\n")
    env = warm_python(command_env())

    def python(*args, stdin="", extra=None, timeout=60):
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env={**env, **(extra or {})}, input=stdin,
                              capture_output=True, text=True, timeout=timeout)
    r = python("s.py", "3", stdin="hi\n")
    assert r.returncode == 3 and r.stdout.strip() == f"['s.py', '3'] {tmp_path / 's.py'} __main__ {tmp_path} True hi"
    r = python("s.py", "fail", stdin="\n")
    assert r.returncode == 1 and r.stderr.startswith("Traceback") and r.stderr.strip().endswith("ValueError: boom")
    assert "warm_python.py" not in r.stderr   # none of its own frames
    r = python("s.py", "0", stdin="\n", extra={"OMP_NUM_THREADS": "2"})   # another environment: not warm
    assert r.returncode == 0 and r.stdout.strip().endswith("False")
    r = python("-c", "import sys; print(sys.argv); sys.exit('no')", "a")
    assert r.returncode == 1 and r.stdout.strip() == "['-c', 'a']" and r.stderr.strip() == "no"
    r = python("-m", "json.tool", stdin='{"a": 1}')
    assert r.returncode == 0 and r.stdout.split() == ["{", '"a":', "1", "}"]
    draws = [python("-c", "import torch, numpy; print(torch.rand(1).item(), numpy.random.rand())").stdout for _ in "ab"]
    assert draws[0] != draws[1]   # each fork starts from a random state of its own, as a fresh process does
    with pytest.raises(subprocess.TimeoutExpired):   # a test's timeout kills the waiting process: the fork goes too
        python("-c", "import time; time.sleep(2); open('late', 'w')", timeout=0.5)
    time.sleep(2.5)
    assert not (tmp_path / "late").exists()
