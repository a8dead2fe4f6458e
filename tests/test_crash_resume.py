"""Runs that survive a crash at any moment: a stage-03 run killed with SIGKILL (before its first checkpoint,
in the middle of an epoch, while writing a checkpoint), then started again with the same command
(`--resume`), ends with exactly the weights of an uninterrupted run; so does a run that augments its images and
loads them in worker processes (CIFAR-10, `--workers 2`), which also ends with the weights of `--workers 0`; so
does a two-process torchrun job with `--max-restarts 1` one of whose workers is killed from outside. Ctrl-C is one
line with the command that continues (exit code 130), and `make run`'s arguments continue."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import sat_files
from conftest import ROOT

# 2 epochs of 20 steps (1297 digits, batch 64), a checkpoint every 5 steps and at each epoch end
ARGS = ["--act", "relu", "--smooth-grad", "none", "--epochs", "2", "--milestones", "1", "--check-size", "32",
        "--checkpoint-every", "5", "--resume", "--quiet", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# Runs stage 03 as `python 03_adv_train.py ARGS`, but kills itself and its loader workers (its process group)
# with SIGKILL (no clean-up, no finally blocks, as a power cut would) at the moment CRASH_AT names:
#   step:N   at the N-th training step, before its attack
#   save:N   in the middle of the N-th checkpoint write: its bytes are in the temporary file, not yet renamed
TRAP = r"""
import importlib, os, runpy, signal, sys
sys.path.insert(0, os.getcwd())
import torch
kind, n = os.environ["CRASH_AT"].split(":")
calls = [0]
def count_then_maybe_die():
    calls[0] += 1
    if calls[0] == int(n):
        os.killpg(0, signal.SIGKILL)
if kind == "step":
    attack = importlib.import_module("02_pgd")
    real_pgd = attack.pgd
    def pgd(*a, **k):
        count_then_maybe_die()
        return real_pgd(*a, **k)
    attack.pgd = pgd
else:
    real_save = torch.save
    def save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.flush()
        count_then_maybe_die()
    torch.save = save
sys.argv = ["03_adv_train.py"] + sys.argv[1:]
runpy.run_path("03_adv_train.py", run_name="__main__")
"""


def run(args, crash_at=None, env=None, warm=None):
    """warm: conftest's warm_python (the trap kills its own process group from inside, which the warm Python's
    fork has to itself: the waiting process then dies of the same signal)."""
    cmd = [sys.executable, "-c", TRAP] if crash_at else [sys.executable, "03_adv_train.py"]
    env = {**ENV, **(env or {}), **({"CRASH_AT": crash_at} if crash_at else {})}
    return subprocess.run(cmd + args, cwd=ROOT, env=warm(env) if warm else env, capture_output=True, text=True,
                          timeout=300, start_new_session=bool(crash_at))   # a process group of its own, for the kill


def final_weights(out):
    return sat_files.load_checkpoint(os.path.join(out, "digits_relu_s0", "final.pt"))["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ from the uninterrupted run"


@pytest.fixture(scope="session")   # session: once per worker, whatever runs in between
def uninterrupted(tmp_path_factory):
    """Run the ordinary way, not warm: the runs compared with it start with hash seeds of their own."""
    out = str(tmp_path_factory.mktemp("straight"))
    r = run(ARGS + ["--out", out])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no checkpoint at" in r.stdout and "starting from scratch" in r.stdout   # --resume with nothing to resume
    return final_weights(out)


@pytest.mark.parametrize("crash_at, resumed_at", [
    ("step:3", None),                                  # before the first checkpoint (step 5)
    ("step:28", "after epoch 1 and 5 steps of epoch 2"),  # epoch 2, 3 steps after its step-5 checkpoint
    ("save:4", "after epoch 0 and 15 steps of epoch 1"),  # while writing the epoch-1 checkpoint (the 4th write)
])
def test_killed_run_restarted_with_the_same_command_ends_identical(uninterrupted, tmp_path, crash_at, resumed_at,
                                                                   warm_python):
    out = str(tmp_path)
    r = run(ARGS + ["--out", out], crash_at=crash_at, warm=warm_python)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    run_dir = os.path.join(out, "digits_relu_s0")
    assert not os.path.exists(os.path.join(run_dir, "final.pt"))
    if crash_at.startswith("save"):
        assert [f for f in os.listdir(run_dir) if f.startswith(sat_files.TMP_PREFIX)], "the kill should leave a temporary file"
    r = run(ARGS + ["--out", out], warm=warm_python)   # the same command again
    assert r.returncode == 0, r.stderr[-2000:]
    if resumed_at:
        assert f"resumed from {os.path.join(run_dir, 'checkpoint.pt')} {resumed_at}" in r.stdout, r.stdout[-2000:]
    else:
        assert "starting from scratch" in r.stdout
    assert not [f for f in os.listdir(run_dir) if f.startswith(sat_files.TMP_PREFIX)]
    assert_same_weights(final_weights(out), uninterrupted)


def test_ctrl_c_is_one_line_with_the_command_that_continues(uninterrupted, tmp_path, warm_python):
    """Ctrl-C in a --jobs 2 sweep of three runs (SIGINT to the whole process group, as a terminal sends it): exit
    code 130, one line naming the command with --resume added, no worker left running, and the third run, queued
    when Ctrl-C came, not started; `make run`'s stage-03 arguments (from the Makefile) then finish the sweep, with
    the uninterrupted run's weights."""
    out = str(tmp_path)
    args = ["--act", "relu", "silu", "gelu"] + [a for a in ARGS[2:] if a != "--resume"] + ["--jobs", "2", "--out", out]
    env = {k: v for k, v in ENV.items() if k != "MAKELEVEL"}   # as typed in a shell, not under `make test`
    p = subprocess.Popen([sys.executable, "03_adv_train.py"] + args, cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while not os.path.exists(os.path.join(out, "digits_relu_s0", "checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and err.startswith("interrupted: the finished runs and"), err[-2000:]
    assert err.strip().endswith(" 03_adv_train.py " + " ".join(args) + " --resume"), err
    for _ in range(100):                            # the workers are gone: nothing trains on behind the user's back
        try:
            os.killpg(p.pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    else:
        pytest.fail("a --jobs worker survived Ctrl-C")
    assert not os.path.exists(os.path.join(out, "digits_gelu_s0", "checkpoint.pt")), "a queued run started after Ctrl-C"
    assert not os.path.exists(os.path.join(out, "digits_relu_s0", "final.pt"))
    with open(os.path.join(ROOT, "Makefile")) as f:
        make_args = [line.split("03_adv_train.py", 1)[1].split() for line in f if "$(PY) 03_adv_train.py" in line][0]
    r = subprocess.run([sys.executable, "03_adv_train.py"] + make_args + args, cwd=ROOT, env=warm_python(ENV), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_same_weights(final_weights(out), uninterrupted)


def test_ctrl_c_to_the_parent_alone_stops_the_workers_jobs(warm_python):
    """`kill -INT` of the parent only (a launcher may signal one process): the --jobs workers stop their jobs (two
    minutes each here) and start no queued one; the command ends in seconds with the one line, exit code 130."""
    script = ("import sys, time, sat_cli, sat_processes\n"
              "sat_cli.run_cli(lambda argv: list(sat_processes.in_processes(time.sleep, [120] * 3, 2)), [])")
    p = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=warm_python(ENV), text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    time.sleep(6)
    t = time.time()
    os.kill(p.pid, signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    finally:
        os.killpg(p.pid, signal.SIGKILL) if p.poll() is None else None
    assert p.returncode == 130 and time.time() - t < 30, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and err.startswith("interrupted: nothing was saved; continue with: "), err


def test_ctrl_c_names_the_interpreter_and_make(monkeypatch, capsys):
    """The line's command starts with `python` where `python` is this interpreter, else with its path; --force is
    left out of a --resume command (it would start the runs over); under make, `make` is named too."""
    import sat_cli

    def main(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(sys, "argv", ["03_adv_train.py", "--runs", "my runs", "--force"])
    monkeypatch.setenv("MAKELEVEL", "1")
    for path, python in ((os.path.dirname(sys.executable), "python"), ("/nonexistent", os.path.relpath(sys.executable))):
        monkeypatch.setenv("PATH", path)
        with pytest.raises(SystemExit) as e:
            sat_cli.run_cli(main, interrupted="the runs are kept", resume_flag="--resume")
        assert e.value.code == 130
        assert capsys.readouterr().err == (f"interrupted: the runs are kept; continue with: {python} 03_adv_train.py "
                                           "--runs 'my runs' --resume (or the make command again)\n")


def children(pid):
    """pids whose parent is `pid` (from /proc)."""
    kids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def local_rank_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        return int(env.get(b"LOCAL_RANK", b"-1"))
    except OSError:
        return -1


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers through /proc")
def test_torchrun_max_restarts_recovers_from_a_killed_worker(tmp_path):
    def torchrun(out):
        # --standalone: a rendezvous on a free local port, as in the README's one-node command
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "--max-restarts", "1", "03_adv_train.py"] + ARGS + ["--epochs", "3", "--steps-per-epoch", "8",
                                                                    "--checkpoint-every", "3", "--out", out]
    straight = subprocess.run(torchrun(str(tmp_path / "a")), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    job = subprocess.Popen(torchrun(str(tmp_path / "b")), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "b" / "digits_relu_s0" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victims = [p for p in children(job.pid) if local_rank_of(p) == 1]
    assert victims, "no worker of local rank 1 found"
    os.kill(victims[0], signal.SIGKILL)                # from outside, once
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-3000:]
    assert "resumed from" in stdout and "all 2 ranks hold identical weights" in stdout, stdout[-3000:]
    assert_same_weights(final_weights(str(tmp_path / "b")), final_weights(str(tmp_path / "a")))



# ----------------------------------------------------------------------------------------------------
# The same with augmentation and loader workers (the cifar10 and imagenet presets load with 4 and 8)

# a generated CIFAR-10 folder (40 training images; random crop and flip), 2 epochs of 5 steps, a checkpoint every
# 2 steps and at each epoch end; a torchvision ResNet-18 (8x8 after its stem on 32x32 images): seconds a run
CIFAR_ARGS = ["--dataset", "cifar10", "--model", "resnet18", "--act", "relu", "--smooth-grad", "none", "--epochs", "2",
              "--milestones", "2", "--warmup-epochs", "1", "--batch-size", "8", "--val-size", "0", "--check-size", "8",
              "--checkpoint-every", "2", "--resume", "--quiet", "--device", "cpu"]
CIFAR_RUN = "cifar10_resnet18_relu_s0"


@pytest.fixture(scope="module")
def cifar(tmp_path_factory, train_mod):
    """cifar(out, workers) runs stage 03's command on the generated folder in this process; returns its final weights.
    (torchvision's md5 check of the real CIFAR-10 files becomes "the file exists", here and, through
    tests/smoke/sitecustomize.py, in the processes the tests start.)"""
    import torchvision.datasets.cifar
    from test_train import _write_fake_cifar   # CIFAR-10's on-disk format, 8 random images a file
    data = tmp_path_factory.mktemp("cifar")
    _write_fake_cifar(data)
    args = CIFAR_ARGS + ["--data", str(data)]

    def command(out, workers, crash_at=None):
        return args + ["--out", str(out), "--workers", str(workers)]

    def train(out, workers):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
            train_mod.main(command(out, workers))
        return sat_files.load_checkpoint(os.path.join(out, CIFAR_RUN, "final.pt"))["model"]
    train.command = command
    return train


@pytest.fixture(scope="module")
def cifar_straight(cifar, tmp_path_factory):
    return cifar(str(tmp_path_factory.mktemp("cifar_straight")), workers=2)


class TestWithLoaderWorkers:
    """A run that augments its images and loads them in 2 worker processes, killed with SIGKILL and started again
    with the same command, ends with the weights of an uninterrupted run; so does one with --workers 0."""

    @pytest.mark.parametrize("crash_at, resumed_at", [
        ("step:6", "after epoch 1\n"),                      # the first step of epoch 2: at the epoch boundary
        ("step:9", "after epoch 1 and 2 steps of epoch 2"),  # epoch 2, 2 steps after its step-2 checkpoint
    ])
    def test_killed_run_with_workers_restarted_ends_identical(self, cifar, cifar_straight, tmp_path, capsys, crash_at, resumed_at,
                                                             warm_python):
        r = run(cifar.command(tmp_path, 2), crash_at, warm=warm_python)   # its PYTHONPATH: tests/smoke (the md5 check)
        assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
        capsys.readouterr()
        resumed = cifar(str(tmp_path), workers=2)          # the same command again (in this process)
        ckpt = os.path.join(tmp_path, CIFAR_RUN, "checkpoint.pt")
        assert f"resumed from {ckpt} {resumed_at}" in capsys.readouterr().out
        assert_same_weights(resumed, cifar_straight)

    def test_workers_0_train_the_weights_of_workers_2(self, cifar, cifar_straight, tmp_path):
        assert_same_weights(cifar(str(tmp_path), workers=0), cifar_straight)


def test_augmentation_is_drawn_from_seed_epoch_and_image_alone(tmp_path, monkeypatch):
    """sat_data.SeededAugmentation: the same key gives the same crop whatever was drawn before, another epoch or
    seed another crop, and the caller's random state (the PGD random starts') is left as it was."""
    import torchvision.datasets.cifar
    from test_train import _write_fake_cifar
    import sat_data
    _write_fake_cifar(tmp_path)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    ds = sat_data.SeededAugmentation(sat_data.get_dataset("cifar10", "train", str(tmp_path)), seed=0)
    first = ds[(3, 5)][0]
    torch.rand(100)                                     # other draws in between change nothing
    before = torch.get_rng_state()
    again = ds.__getitems__([(3, 4), (3, 5)])[1][0]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(again, first)
    assert not torch.equal(ds[(4, 5)][0], first)        # the next epoch: another crop or flip
    assert not torch.equal(sat_data.SeededAugmentation(ds.dataset, seed=1)[(3, 5)][0], first)
