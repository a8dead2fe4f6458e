"""Make the numbered stages importable (their file names start with a digit, so via importlib), give every test
process one torch thread, and train the small model several test files attack once per `make test`.

The suite runs on every core with pytest-xdist (`-n auto` in pytest.ini): one worker process per core and one
more (pytest_xdist_auto_num_workers below), each with ONE torch thread (two threads per process spin-wait each
other when the other core is busy: a 10x slow-down measured here), and OMP_NUM_THREADS=1 for the processes the
tests start. `--dist loadscope` sends each test
file, and each test class, to one worker, whose tests then run in order: the notebooks (the student editions
reuse what the full ones trained), the crash tests (one uninterrupted run for all), each part of the README
commands (a class each: they read what earlier commands of their part wrote). (`--dist loadgroup` with
`xdist_group` marks would be finer, but with pytest 9.2 and pytest-xdist 3.8 it spreads a group over workers.)
The longest of these units are handed out first (LONGEST_FIRST, with --no-loadscope-reorder in pytest.ini), so
that the workers end together: the short files fill the gaps at the end."""
import importlib
import os
import signal
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")   # before torch is imported, and for every subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def stage(name):
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def acts():
    return stage("01_activations")


@pytest.fixture(scope="session")
def attack():
    return stage("02_pgd")


@pytest.fixture(scope="session")
def train_mod():
    return stage("03_adv_train")


def pytest_configure(config):
    """One temporary folder for the whole session, removed at its end when every test passed (kept, and named,
    after a failure): what the suite's processes leave in the temporary folder goes there, through TMPDIR, which the
    xdist workers and every process they start inherit: multiprocessing's pymp-*, torchrun's torchelastic_*
    (processes the crash tests kill cannot clean up after themselves), pytest's own tmp_path folders. CI's disk is
    shared. torch.compile's cache (torchinductor_USER) stays where it was, warm from one session to the next."""
    if hasattr(config, "workerinput"):   # an xdist worker: the controller's TMPDIR is in its environment already
        return
    import getpass
    import tempfile
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}"))
    config.session_tmp = tempfile.mkdtemp(prefix="sat-tests-")
    os.environ["TMPDIR"] = tempfile.tempdir = config.session_tmp


def pytest_sessionfinish(session, exitstatus):
    session.config.session_passed = exitstatus == 0


def pytest_unconfigure(config):
    if getattr(config, "session_tmp", None) is None:
        return
    if getattr(config, "session_passed", False):
        import shutil
        shutil.rmtree(config.session_tmp, ignore_errors=True)
    else:
        print(f"the session's temporary files are kept in {config.session_tmp}", file=sys.stderr)


@pytest.hookimpl(optionalhook=True)   # pytest-xdist's hook: unknown to pytest without it (-p no:xdist)
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core and one more. Much of a test's time is a wait for a process it started (a stage,
    torchrun, the warm Python's fork below, a notebook kernel), which works on a core meanwhile; the extra worker
    fills such waits. 2 cores, the whole suite, the same fresh clone: 258 s with 2 workers, 238 s with 3, 249 s with 4."""
    return (os.cpu_count() or 1) + 1


def shared_dir(tmp_path_factory):
    """A folder every xdist worker of this run sees (the parent of the workers' own temporary folders), or this
    process's own temporary folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory, train_mod):
    """A small adversarially trained digits model (PGD-1, eps 32/255, 8 epochs, ~4 s), for attack tests.
    Trained once per test run: the first worker to ask trains it under a file lock, the others read its
    final.pt (train() reuses a finished run with the same settings)."""
    from filelock import FileLock   # comes with torch
    import sat_models
    out = shared_dir(tmp_path_factory) / "trained" / "digits_relu"
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = train_mod.preset_config("digits", act="relu", epochs=8, milestones=[6], out=str(out))
    with FileLock(str(out) + ".lock"):
        path = train_mod.train(cfg, quiet=True)
    model, _ = sat_models.model_from_checkpoint(path)
    return model, path


SMOKE_DIR = os.path.join(ROOT, "tests", "smoke")


@pytest.fixture(scope="session")
def warm_python(tmp_path_factory):
    """warm_python(env) -> env, in which the Python processes a test starts hand their work to a warm server that
    has imported torch, torchvision, ... already (tests/smoke/warm_python.py): tests/smoke on PYTHONPATH (whose
    sitecustomize also makes torchvision's md5 check of CIFAR-10 files "the file exists"), one torch thread, the
    Agg backend. One server per test worker, started at the first use, stopped with whatever it still runs at the
    session's end. Not for a test that kills a process from outside (see warm_python.py)."""
    server = {}   # "process", "socket": once started

    def warm(env):
        env = {**env, "PYTHONPATH": SMOKE_DIR, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        if not server:
            sock = str(tmp_path_factory.mktemp("warm") / "python.sock")
            server.update(socket=sock, process=subprocess.Popen(
                [sys.executable, os.path.join(SMOKE_DIR, "warm_python.py"), "serve", sock], env={**os.environ, **env},
                stdin=subprocess.DEVNULL, start_new_session=True))
            deadline = time.time() + 60
            while not os.path.exists(sock) and server["process"].poll() is None and time.time() < deadline:
                time.sleep(0.05)
            assert os.path.exists(sock), f"the warm python server did not start (exit code {server['process'].poll()})"
        return {**env, "SAT_WARM_SOCKET": server["socket"]}
    yield warm
    if server:   # the server, and any fork a failed test left running: every process of the server's session
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            try:
                if os.getsid(pid) == server["process"].pid:
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        server["process"].wait(timeout=30)


# The test units that take longest (seconds of one worker, measured with --durations=0 before the warm Python), in
# the order they are handed out; every other file follows in collection order. Keeps the order of the tests inside
# each unit. Measured again on 2026-12-07 with the warm Python (3 workers): TestPart1 ~140 s, test_crash_resume.py
# ~105 s, TestPart2 ~90 s, test_eval_scale.py and test_notebooks.py ~70 s each, TestPart0 ~15 s; handing them out
# in that order was not faster (one run each, 270 s against 251 s), so the order below stays.
LONGEST_FIRST = ["test_readme_commands.py::TestPart1",   # ~125 s: the scaling page (CIFAR-10, ImageNet, torchrun)
                 "test_readme_commands.py::TestPart2",   # ~110 s: RESULTS.md, SNIPPETS.md, the stages' docstrings
                 "test_readme_commands.py::TestPart0",   # ~60 s: the README (make run, make notebooks)
                 "test_eval_scale.py", "test_notebooks.py", "test_crash_resume.py", "test_jobs_and_intervals.py"]


def pytest_collection_modifyitems(items):
    def rank(item):
        name = f"{item.path.name}::{item.nodeid.split('::', 1)[1]}"
        return next((i for i, unit in enumerate(LONGEST_FIRST) if name.startswith(unit)), len(LONGEST_FIRST))
    items.sort(key=rank)
