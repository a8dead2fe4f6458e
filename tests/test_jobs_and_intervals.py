"""--jobs (03 and 04: one process per run, the same numbers as --jobs 1) and stage 04's comparisons with ReLU
(paired bootstrap intervals over seeds and test images, verdicts)."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, stage

E = stage("04_eval")


def test_verdict_rules():
    assert E.verdict(0.001, 0.02) == "better"
    assert E.verdict(-0.02, -0.001) == "worse"
    assert E.verdict(-0.02, 0.029) == "equal"            # within +-3 points, 0 inside
    assert E.verdict(-0.05, 0.01) == "undecided"         # neither excludes 0 nor within the margin


def test_bootstrap_of_identical_models_is_exactly_zero():
    a = (np.random.default_rng(0).random((1, 300)) < 0.6)
    assert E.bootstrap_diff(a, a.copy()) == (0.0, 0.0, 0.0)


def test_bootstrap_finds_a_planted_difference_and_covers_it():
    rng = np.random.default_rng(0)
    b = rng.random((5, 500)) < 0.5
    b[:, :30] = False                                    # 30 images wrong in every reference seed,
    a = b.copy()
    a[:, :30] = True                                     # right in every seed of the configuration: +6 points
    d, lo, hi = E.bootstrap_diff(a, b)
    assert d == pytest.approx(0.06) and 0 < lo < 0.06 < hi
    assert E.verdict(lo, hi) == "better"


def test_pairing_narrows_the_interval():
    """The same images judged for both models: what both get right or wrong cancels. Shuffling one model's
    images breaks the pairing and must widen the interval (a bootstrap that resampled a's and b's images
    independently would not see the difference)."""
    rng = np.random.default_rng(1)
    hard = rng.random(1000) < 0.5                                        # images every model gets wrong
    a = np.array([~hard & (rng.random(1000) < 0.95) for _ in range(6)])
    b = np.array([~hard & (rng.random(1000) < 0.93) for _ in range(6)])
    _, lo, hi = E.bootstrap_diff(a, b)
    _, lo_u, hi_u = E.bootstrap_diff(a, b[:, rng.permutation(1000)])
    assert hi - lo < 0.6 * (hi_u - lo_u)


def run(*args, cwd, env=None):
    r = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def test_jobs_give_the_same_numbers_as_one_process(tmp_path, warm_python):
    """03 --jobs 2 trains the same weights as --jobs 1 (two runs, two seeds), and 04 --jobs 2 reports the same
    numbers; 04 then compares the configuration with ReLU over the two seeds."""
    train = ["--act", "relu", "silu", "--smooth-grad", "none", "--seeds", "2", "--epochs", "2", "--steps-per-epoch",
             "3", "--quiet"]
    stage("03_adv_train").main(train + ["--jobs", "1", "--out", str(tmp_path / "one")])   # in this process
    out = run(f"{ROOT}/03_adv_train.py", *train, "--jobs", "2", "--out", "two", cwd=tmp_path, env=warm_python(os.environ))
    assert "2 at a time" in out and "[4/4]" in out
    for r in ("digits_relu_s0", "digits_relu_s1", "digits_silu_s0", "digits_silu_s1"):
        a = torch.load(tmp_path / "one" / r / "final.pt", weights_only=False)["model"]
        b = torch.load(tmp_path / "two" / r / "final.pt", weights_only=False)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), r
        assert (tmp_path / "two" / r / "train.log").read_text().strip().endswith("final.pt")
    ev = ["--runs", str(tmp_path / "two"), "--limit", "10", "--apgd-steps", "3", "--square-queries", "10"]
    E.main(ev + ["--jobs", "1", "--out", str(tmp_path / "ev1")])                            # in this process
    run(f"{ROOT}/04_eval.py", *ev, "--jobs", "2", "--out", "ev2", cwd=tmp_path, env=warm_python(os.environ))
    assert (tmp_path / "ev1" / "per_run.csv").read_text() == (tmp_path / "ev2" / "per_run.csv").read_text()
    rows = list(csv.DictReader(open(tmp_path / "ev2" / "comparisons.csv")))
    assert [r["configuration"] for r in rows] == ["digits silu"] and rows[0]["seeds"] == "2 vs 2, paired"
    assert rows[0]["worst case verdict"] in ("better", "worse", "equal", "undecided")


def test_jobs_under_torchrun_or_below_one_is_one_line(tmp_path):
    for args, env, msg in [(["--jobs", "0"], {}, "--jobs"),
                           (["--jobs", "2"], {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}, "torchrun")]:
        import os
        r = subprocess.run([sys.executable, f"{ROOT}/03_adv_train.py", "--out", str(tmp_path), *args],
                           capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("error:") and msg in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


WORKER_SCRIPT = """
import os, sys, time
sys.path.insert(0, {root!r})
import sat_processes

def job(i):
    open(os.path.join({out!r}, str(os.getpid())), "w").close()
    time.sleep(60)
    return i

if __name__ == "__main__":
    for _ in sat_processes.in_processes(job, range(4), 2):
        pass
"""


def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\\tZ" not in next(line for line in f if line.startswith("State:"))   # a zombie is dead
    except (FileNotFoundError, ProcessLookupError):   # gone before the open, or between the open and the read
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_jobs_workers_die_with_their_parent(tmp_path):
    """A --jobs parent killed with SIGKILL must not leave its workers training on (and taking the queued jobs)."""
    import signal
    import time
    (tmp_path / "pids").mkdir()
    (tmp_path / "w.py").write_text(WORKER_SCRIPT.format(root=ROOT, out=str(tmp_path / "pids")))
    parent = subprocess.Popen([sys.executable, str(tmp_path / "w.py")], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while len(os.listdir(tmp_path / "pids")) < 2 and time.time() < deadline:
        time.sleep(0.2)
    workers = [int(p) for p in os.listdir(tmp_path / "pids")]
    assert len(workers) == 2 and all(alive(p) for p in workers)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while any(alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in workers), "a worker outlived its killed parent"
