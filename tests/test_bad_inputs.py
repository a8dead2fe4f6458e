"""Bad input, anywhere: one line `error: ...` naming the bad value and what is accepted, exit code 2, no
traceback, and nothing lost (no checkpoint written or changed). Every numeric option of every stage is tried
with NaN, infinity or a value out of its range; output folders that are files; a corrupt JPEG in an
ImageFolder; a checkpoint write that fails."""
import errno
import importlib

import numpy as np
import pytest
import torch

import sat_cli

FILE = "@file"   # replaced by the path of an existing plain file


def stage(n):
    return importlib.import_module({1: "01_activations", 2: "02_pgd", 3: "03_adv_train", 4: "04_eval"}[n])


CASES = [   # (stage, arguments, a piece of the expected message)
    (1, ["--act", "swish"], "unknown activation 'swish'; accepted: relu"),
    (1, ["--out", FILE], "cannot be used as an output folder (File exists)"),
    (2, ["--eps", "nan"], "--eps must be a finite number in (0, 255] (pixel units: 4 means 4/255), got nan"),
    (2, ["--eps", "300"], "--eps must be a finite number in (0, 255]"),
    (2, ["--eps", "inf"], "got inf"),
    (2, ["--eps", "-4"], "got -4.0"),
    (2, ["--eps", "abc"], "argument --eps: 'abc' is not a number; --eps is in pixel units (8 or 8/255 means 8/255)"),
    (2, ["--eps", "0.031"], "argument --eps: eps is in 1/255 units: did you mean 8? (0.031 would be 0.031/255; write"),
    (2, ["--steps", "10", "0"], "--steps must be a finite number in [1, 100000], got 0"),
    (2, ["--seed", "-1"], "--seed must be a finite number in [0, 4294967295], got -1"),
    (2, ["--out", FILE + "/sub"], "cannot be used as an output folder (Not a directory)"),
    (2, ["--device", "tpu"], "unknown --device 'tpu'; accepted: auto, cpu, cuda, cuda:N"),
    (2, ["--bogus"], "unrecognized arguments: --bogus"),
    (3, ["--eps", "inf"], "--eps must be a finite number in (0, 255]"),
    (3, ["--eps", "0.031"], "argument --eps: eps is in 1/255 units: did you mean 8?"),   # 8/255 in [0, 1] units
    (3, ["--eps", "0.1"], "did you mean 25.5?"),                                         # Fashion-MNIST's usual 0.1
    (3, ["--eps", "8/256"], "argument --eps: '8/256': --eps is in 1/255 units; write 8/255, or the number alone"),
    (3, ["--attack-step", "16/256"], "argument --attack-step: '16/256': --attack-step is in 1/255 units; write 16/255"),
    (3, ["--eps", "0"], "--eps must be a finite number in (0, 255]"),
    (3, ["--width", "0"], "--width must be a finite number in [1, 4096], got 0"),
    (3, ["--lr-per-256", "nan"], "--lr-per-256 must be a finite number in (0, inf), got nan"),
    (3, ["--lr-per-256", "0"], "--lr-per-256 must be a finite number in (0, inf), got 0.0"),
    (3, ["--batch-size", "0"], "--batch-size must be a finite number in [1, inf), got 0"),
    (3, ["--batch-size", "4096"], "training set of 1297 images is smaller than one batch of 4096"),
    (3, ["--epochs", "0"], "--epochs must be a finite number in [1, 100000], got 0"),
    (3, ["--attack-steps", "0"], "--attack-steps must be a finite number in [1, 100000], got 0"),
    (3, ["--attack-step", "-1"], "--attack-step must be a finite number in [0, 255] (pixel units: 4 means 4/255; 0 = the default)"),
    (3, ["--rand-start-prob", "1.5"], "--rand-start-prob must be a finite number in [0, 1], got 1.5"),
    (3, ["--label-smoothing", "nan"], "--label-smoothing must be a finite number in [0, 1], got nan"),
    (3, ["--attack-step", "300"], "--attack-step must be a finite number in [0, 255]"),
    (3, ["--weight-decay", "-0.1"], "--weight-decay must be a finite number in [0, 1], got -0.1"),
    (3, ["--warmup-epochs", "inf"], "--warmup-epochs must be a finite number in [0, 100000], got inf"),
    (3, ["--milestones", "0"], "--milestones must be a finite number in [1, 100000], got 0"),
    (3, ["--workers", "-1"], "--workers must be a finite number in [0, 1024], got -1"),
    (3, ["--threads", "-2"], "--threads must be a finite number in [0, 4096], got -2"),
    (3, ["--check-size", "0"], "--check-size must be a finite number in [1, inf), got 0"),
    (3, ["--seeds", "0"], "--seeds must be a finite number in [1, 100000], got 0"),
    (3, ["--seed", "-1"], "--seed must be a finite number in [0, 4294967295], got -1"),
    (3, ["--stop-after-epoch", "0"], "--stop-after-epoch must be a finite number in [1, 100000], got 0"),
    (3, ["--checkpoint-every", "-5"], "--checkpoint-every must be a finite number in [0, inf), got -5"),
    (3, ["--steps-per-epoch", "-1"], "--steps-per-epoch must be a finite number in [0, inf), got -1"),
    (3, ["--dataset", "imagenet", "--image-size", "8"], "--image-size must be a finite number in [16, 4096], got 8"),
    (3, ["--out", FILE], "--out '@file' cannot be used as an output folder (File exists)"),
    (3, ["--act", "silu", "--smooth-grad", "attacker"], "--smooth-grad attacker applies to --act relu only, not silu"),
    (3, ["--attack", "none", "--smooth-grad", "both"], "--attack none (standard training) leaves no run"),
    (3, ["--dataset", "mnist"], "unknown dataset 'mnist'; accepted: digits, cifar10, fashionmnist, imagenet"),
    (3, ["--dataset", "fashionmnist", "--data", "/nonexistent/fm"], "no Fashion-MNIST in '/nonexistent/fm' (nor in its FashionMNIST/raw/): it needs"),
    (3, ["--dataset", "fashionmnist", "--width", "0"], "--width must be a finite number in [1, 4096], got 0"),
    (3, ["--amp", "fp8"], "unknown --amp 'fp8'; accepted: auto, bf16, fp16, off"),
    (3, ["--attack", "fgsm"], "unknown --attack 'fgsm'; accepted: pgd, none"),
    (3, ["--jobs", "0"], "--jobs must be a finite number in [1, 4096] (processes working at once), got 0"),
    (3, ["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (4, ["--jobs", "-1"], "--jobs must be a finite number in [1, 4096] (processes working at once), got -1"),
    (4, ["--limit", "-1"], "--limit must be a finite number in [0, inf) (0 = every test image), got -1"),
    (4, ["--batch-size", "0"], "--batch-size must be a finite number in [1, inf), got 0"),
    (4, ["--apgd-steps", "0"], "--apgd-steps must be a finite number in [1, 100000], got 0"),
    (4, ["--square-queries", "0"], "--square-queries must be a finite number in [1, 1000000], got 0"),
    (4, ["--eps", "nan"], "--eps must be a finite number in (0, 255]"),
    (4, ["--eps", "0.031"], "argument --eps: eps is in 1/255 units: did you mean 8?"),
    (4, ["--eps", "256"], "got 256.0"),
    (4, ["--runs", FILE], "--runs '@file' is a file"),
    (4, ["--out", FILE], "cannot be used as an output folder (File exists)"),
]


def test_eps_written_with_255_is_accepted():
    """8/255 as most codebases write it is 8 in the stages' pixel units; a radius below 1/255 is written 0.5/255;
    a step below 1 is a real one (ImageNet's PGD-20 at 4/255 steps 0.5/255) and needs no /255."""
    import sat_eval_run
    train = stage(3)
    assert train.parse_args(["--eps", "8/255"]).eps == 8.0 and train.parse_args(["--eps", "0.5/255"]).eps == 0.5
    assert train.parse_args(["--eps", " 8/255.0 "]).eps == 8.0
    assert train.parse_args(["--eps", "4", "--attack-step", "0.5"]).attack_step == 0.5
    assert train.parse_args(["--eps", "8", "--attack-step", "2/255"]).attack_step == 2.0
    assert sat_eval_run.parse_args(stage(4), ["--eps", "8/255"]).eps == 8.0


def run_cli(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        sat_cli.run_cli(main, argv)
    return e.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("n, args, msg", CASES, ids=[f"{n}:{' '.join(a)}" for n, a, _ in CASES])
def test_bad_input_is_one_line_exit_2(n, args, msg, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)                 # the default runs/ folder, if anything wrote it, lands here
    (tmp_path / "@file").write_text("not a folder")
    argv = list(args)
    if n in (2, 3) and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    if n == 4 and "--runs" not in argv:
        (tmp_path / "runs" / "03_adv_train").mkdir(parents=True)
    code, err = run_cli(stage(n).main, argv, capsys)
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert msg in err, err
    assert not list(tmp_path.rglob("*.pt")), "a checkpoint was written for a command that was refused"


def test_corrupt_jpeg_names_the_file(tmp_path, capsys):
    """In the main process and in a loader worker process (whose error torch re-raises with a traceback)."""
    from PIL import Image
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in ("n01", "n02", "n03"):
            (tmp_path / "im" / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.randint(0, 256, (36, 36, 3), dtype=np.uint8)).save(tmp_path / "im" / split / c / f"{i}.JPEG")
    bad = tmp_path / "im" / "train" / "n02" / "1.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])     # truncated mid-file, as a broken download leaves it
    for workers in ("0", "1"):
        code, err = run_cli(stage(3).main, ["--dataset", "imagenet", "--data", str(tmp_path / "im"), "--image-size", "16",
                                            "--batch-size", "12", "--epochs", "1", "--check-size", "4", "--workers", workers,
                                            "--act", "relu", "--smooth-grad", "none", "--quiet", "--force",
                                            "--out", str(tmp_path / "out")], capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"error: image '{bad}' cannot be read" in err and "replace or delete it" in err, err


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    """A full disk at the second epoch's checkpoint: one error line, the first epoch's checkpoint intact."""
    args = ["--act", "relu", "--smooth-grad", "none", "--epochs", "2", "--milestones", "1", "--check-size", "16",
            "--quiet", "--out", str(tmp_path)]
    sat_cli.run_cli(stage(3).main, args + ["--stop-after-epoch", "1"])
    ckpt = tmp_path / "digits_relu_s0" / "checkpoint.pt"
    before = ckpt.read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    code, err = run_cli(stage(3).main, args + ["--resume"], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"error: could not write checkpoint '{ckpt}' (No space left on device); the previous checkpoint there" in err
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["checkpoint.pt", "log.csv"]   # no temporary left over
