"""Stage 03: one optimisation step on each data path, resume equality, torchrun with 2 processes, the
smooth-gradient switch, and one-line errors that leave checkpoints untouched."""
import dataclasses
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import sat_cli
import sat_data
import sat_files
import sat_models
import sat_seeds
import sat_sweep
from conftest import ROOT


def cfg_digits(train_mod, tmp_path, **kw):
    kw = {"epochs": 1, "milestones": [], "check_size": 64, "out": str(tmp_path / "run"), **kw}
    return train_mod.preset_config("digits", **kw)


def weights(path):
    return sat_files.load_checkpoint(path)["model"]


def test_digits_step_changes_weights_and_writes_checkpoint(train_mod, tmp_path):
    cfg = cfg_digits(train_mod, tmp_path)
    path = train_mod.train(cfg, quiet=True)
    ckpt = sat_files.load_checkpoint(path)
    assert ckpt["finished"] and ckpt["epoch"] == 1 and ckpt["config"]["eps"] == 64.0
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "epoch", "config", "rng", "metrics"}
    sat_seeds.seed_everything(cfg.seed)
    init = sat_models.build_model(ckpt["config"]).state_dict()
    assert not torch.equal(init["1.stem.0.weight"], ckpt["model"]["1.stem.0.weight"])
    row = ckpt["metrics"]["history"][0]
    assert np.isfinite(row["loss"]) and 0 <= row["check_pgd10_acc"] <= row["check_clean_acc"] <= 1
    assert (tmp_path / "run" / "log.csv").read_text().startswith("epoch,lr,loss")


def _write_fake_cifar(root, n=8):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.randint(0, 10, n))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def test_cifar10_folder_step(train_mod, tmp_path, monkeypatch):
    """torchvision's real CIFAR10 reader on a tiny folder in its on-disk format. Its md5 check of the
    real files cannot pass on generated data, so that one check is reduced to "the file exists"."""
    import torchvision.datasets.cifar
    _write_fake_cifar(tmp_path / "data")
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    cfg = train_mod.preset_config("cifar10", data=str(tmp_path / "data"), epochs=1, batch_size=8, milestones=[],
                                  check_size=8, workers=0, out=str(tmp_path / "run"), val_size=4)
    ckpt = sat_files.load_checkpoint(train_mod.train(cfg, quiet=True))
    assert ckpt["config"]["model"] == "cifar_resnet18" and ckpt["config"]["eps"] == 8.0
    assert os.path.isfile(tmp_path / "run" / "best.pt")   # the preset's validation split (4 of the 40 images here)
    assert np.isfinite(ckpt["metrics"]["history"][0]["loss"])


def test_imagenet_folder_step_resnet50(train_mod, tmp_path):
    from PIL import Image
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            (tmp_path / "imnet" / split / c).mkdir(parents=True)
            for i in range(4):
                arr = rng.randint(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / "imnet" / split / c / f"img{i}.JPEG")
    cfg = train_mod.preset_config("imagenet", data=str(tmp_path / "imnet"), image_size=32, epochs=1, batch_size=4,
                                  milestones=[], warmup_epochs=0, check_size=4, workers=0, channels_last=True,
                                  out=str(tmp_path / "run"))
    ckpt = sat_files.load_checkpoint(train_mod.train(cfg, quiet=True))
    assert ckpt["config"]["num_classes"] == 2 and ckpt["config"]["rand_start_prob"] == 0.8
    assert ckpt["config"]["label_smoothing"] == 0.1 and np.isfinite(ckpt["metrics"]["history"][0]["loss"])


def test_resume_gives_identical_weights(train_mod, tmp_path):
    straight = train_mod.train(cfg_digits(train_mod, tmp_path / "a", epochs=2, milestones=[1]), quiet=True)
    cfg = cfg_digits(train_mod, tmp_path / "b", epochs=2, milestones=[1])
    train_mod.train(cfg, stop_after_epoch=1, quiet=True)
    assert not os.path.exists(tmp_path / "b" / "run" / "final.pt")
    resumed = train_mod.train(cfg, resume=True, quiet=True)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_two_processes_gloo(tmp_path, warm_python):
    env = warm_python(os.environ)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "03_adv_train.py", "--act", "relu", "--smooth-grad", "none", "--epochs", "1", "--milestones",
                        "--check-size", "64", "--device", "cpu", "--quiet", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "all 2 ranks hold identical weights" in r.stdout
    assert "2 process(es), 20 steps/epoch" in r.stdout     # each rank: half of 1297 images in batches of 32
    assert (tmp_path / "digits_relu_s0" / "final.pt").exists()


@pytest.mark.parametrize("mode, expected", [("none", set()), ("attacker", {"attack"}),
                                            ("optimizer", {"update"}), ("both", {"attack", "update"})])
def test_smooth_grad_switch_only_where_asked(train_mod, tmp_path, monkeypatch, mode, expected):
    phase, used = ["update"], set()
    real_apply, real_pgd = train_mod.acts._ReLUWithSmoothGrad.apply, train_mod.pgd

    def spy_apply(*args):
        used.add(phase[0])
        return real_apply(*args)

    def spy_pgd(*args, **kw):
        phase[0] = "attack"
        try:
            return real_pgd(*args, **kw)
        finally:
            phase[0] = "update"
    monkeypatch.setattr(train_mod.acts._ReLUWithSmoothGrad, "apply", spy_apply)
    monkeypatch.setattr(train_mod, "pgd", spy_pgd)   # the name the training step calls
    model = sat_models.build_model({"dataset": "digits", "model": "digitsnet", "num_classes": 10, "act": "relu", "smooth_grad": mode})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = sat_data.digits_tensors("train")
    train_mod.smooth_grad_step(model, x[:16], y[:16], opt, 0.1, 0.1, 1, smooth_grad=mode)
    assert used == expected


def run_cli(train_mod, capsys, args):
    with pytest.raises(SystemExit) as e:
        sat_cli.run_cli(train_mod.main, args)
    err = capsys.readouterr().err.strip()
    return e.value.code, err


@pytest.mark.parametrize("args, msg", [
    (["--dataset", "mnist"], "unknown dataset 'mnist'; accepted: digits, cifar10, fashionmnist, imagenet"),
    (["--act", "swish"], "unknown activation 'swish'; accepted: relu"),
    (["--model", "resnet9000"], "unknown model 'resnet9000'"),
    (["--model", "resnet18"], "model 'resnet18' does not fit dataset 'digits'"),
    (["--dataset", "cifar10", "--model", "digitsnet"], "model 'digitsnet' does not fit dataset 'cifar10'"),
    (["--eps", "0"], "--eps must be a finite number in (0, 255]"),
    (["--smooth-grad", "sometimes"], "unknown --smooth-grad 'sometimes'"),
    (["--dataset", "imagenet", "--data", "/nonexistent/imagenet"], "no ImageNet folder '/nonexistent/imagenet/train'"),
    (["--dataset", "cifar10", "--data", "/nonexistent/c10"], "no CIFAR-10 at '/nonexistent/c10/cifar-10-batches-py'"),
    (["--dataset", "fashionmnist", "--data", "/nonexistent/fm"], "no Fashion-MNIST in '/nonexistent/fm' (nor in its FashionMNIST/raw/)"),
    (["--dataset", "fashionmnist", "--model", "resnet18"], "model 'resnet18' does not fit dataset 'fashionmnist' (1 channel); use fashionnet"),
])
def test_bad_inputs_one_line_exit_2(train_mod, capsys, tmp_path, args, msg):
    code, err = run_cli(train_mod, capsys, args + ["--act", "relu", "--smooth-grad", "none", "--out", str(tmp_path)]
                        if "--act" not in args and "--smooth-grad" not in args else args + ["--out", str(tmp_path)])
    assert code == 2 and msg in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.rglob("*.pt"))


@pytest.mark.parametrize("content", [b"this is not a checkpoint", "foreign", "truncated"])
def test_bad_resume_checkpoint_is_refused_and_kept(train_mod, capsys, tmp_path, content):
    run = tmp_path / "digits_relu_s0"
    run.mkdir()
    if content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, run / "checkpoint.pt")
    elif content == "truncated":
        cfg = cfg_digits(train_mod, tmp_path, out=str(tmp_path / "ok"))
        train_mod.train(cfg, quiet=True)
        data = (tmp_path / "ok" / "checkpoint.pt").read_bytes()
        (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    else:
        (run / "checkpoint.pt").write_bytes(content)
    before = (run / "checkpoint.pt").read_bytes()
    code, err = run_cli(train_mod, capsys, ["--act", "relu", "--smooth-grad", "none", "--resume", "--out", str(tmp_path)])
    assert code == 2 and "checkpoint" in err and len(err.splitlines()) == 1, err
    assert (run / "checkpoint.pt").read_bytes() == before


def test_unfinished_run_is_not_overwritten_without_resume(train_mod, capsys, tmp_path):
    cfg = cfg_digits(train_mod, tmp_path, epochs=2, out=str(tmp_path / "digits_relu_s0"))
    train_mod.train(cfg, stop_after_epoch=1, quiet=True)
    before = (tmp_path / "digits_relu_s0" / "checkpoint.pt").read_bytes()
    code, err = run_cli(train_mod, capsys, ["--act", "relu", "--smooth-grad", "none", "--epochs", "2", "--out", str(tmp_path)])
    assert code == 2 and "--resume" in err
    assert (tmp_path / "digits_relu_s0" / "checkpoint.pt").read_bytes() == before
    # --resume (make run passes it) continues it only with the settings it was started with
    code, err = run_cli(train_mod, capsys, ["--act", "relu", "--smooth-grad", "none", "--epochs", "2", "--milestones", "--lr-per-256", "0.05",
                                            "--resume", "--out", str(tmp_path)])
    assert code == 2 and len(err.splitlines()) == 1 and "holds a run started with other settings (lr_per_256 0.2 -> 0.05);" in err
    assert (tmp_path / "digits_relu_s0" / "checkpoint.pt").read_bytes() == before


def test_divergence_stops_with_a_clear_message(train_mod, tmp_path):
    cfg = cfg_digits(train_mod, tmp_path, lr_per_256=1e12)
    with pytest.raises(train_mod.TrainingDiverged, match="loss became nan|loss became inf"):
        train_mod.train(cfg, quiet=True)
    assert not (tmp_path / "run" / "final.pt").exists()


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    sat_files.save_checkpoint({"model": {"w": torch.ones(3)}, "config": {}}, str(path))
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt("killed mid-write")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        sat_files.save_checkpoint({"model": {"w": torch.zeros(3)}, "config": {}}, str(path))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_finished_run_is_reused_only_with_the_same_settings(train_mod, tmp_path):
    cfg = cfg_digits(train_mod, tmp_path)
    path = train_mod.train(cfg, quiet=True)
    before = open(path, "rb").read()
    assert train_mod.train(cfg, quiet=True) == path and open(path, "rb").read() == before   # reused
    with pytest.raises(sat_cli.UserError, match=r"trained with other settings \(eps 64.0 -> 32.0\)"):
        train_mod.train(cfg_digits(train_mod, tmp_path, eps=32.0), quiet=True)
    assert open(path, "rb").read() == before


def test_several_models_each_at_its_usual_resolution_in_its_own_folder(train_mod, tmp_path):
    args = train_mod.parse_args(["--dataset", "imagenet", "--model", "resnet101", "efficientnet_b3", "--act", "silu", "relu",
                                 "--smooth-grad", "none", "--out", str(tmp_path)])
    cfgs = sat_sweep.configs_from_args(train_mod, args)
    assert [(c.model, c.act, c.image_size, os.path.basename(c.out)) for c in cfgs] == [
        ("resnet101", "relu", 224, "imagenet_resnet101_relu_s0"), ("resnet101", "silu", 224, "imagenet_resnet101_silu_s0"),
        ("efficientnet_b3", "relu", 300, "imagenet_efficientnet_b3_relu_s0"), ("efficientnet_b3", "silu", 300, "imagenet_efficientnet_b3_silu_s0")]
    sized = sat_sweep.configs_from_args(train_mod, train_mod.parse_args(["--dataset", "imagenet", "--model", "efficientnet_b3",
                                                              "--act", "silu", "--image-size", "64"]))
    assert sized[0].image_size == 64 and os.path.basename(sized[0].out) == "imagenet_efficientnet_b3_silu_s0"


def test_a_run_of_other_settings_gets_its_own_folder(train_mod):
    """eps and the training attack's steps are named where they differ from the preset, so `--eps 8` after `make run`
    neither is refused as existing nor, with --force, replaces make run's runs (the preset's names stay as they were)."""
    def names(*argv):
        return [os.path.basename(c.out) for c in sat_sweep.configs_from_args(train_mod, train_mod.parse_args(list(argv)))]
    assert names("--act", "relu", "--smooth-grad", "none", "attacker") == ["digits_relu_s0", "digits_relu_sg-attacker_s0"]
    assert names("--act", "relu", "--smooth-grad", "none", "--eps", "8/255") == ["digits_relu_eps8_s0"]
    assert names("--act", "silu", "--eps", "32", "--attack-steps", "10", "--seed", "3") == ["digits_silu_eps32_pgd10_s3"]
    assert names("--act", "silu", "--eps", "64") == ["digits_silu_s0"]                   # the preset's eps, written out
    assert names("--dataset", "fashionmnist", "--act", "silu", "--attack-steps", "1", "--eps", "25.5") == [
        "fashionmnist_silu_pgd1_s0"]                                                     # the preset there is PGD-2
    assert names("--act", "silu", "--attack", "none", "--eps", "12.5") == ["digits_silu_eps12.5_standard_s0"]


# ----------------------------------------------------------------------------------------------------
# Traps met by a user copying the pieces (issue 21), and the settings declared once

@pytest.mark.parametrize("model", ["torchvision resnet18", "Sequential with nn.ReLU"])
def test_smooth_grad_on_a_model_without_switchable_relu_is_refused(train_mod, model):
    """smooth_grad='attacker' on a stock model would silently train plain ReLU (a wrong Table 1 row)."""
    import torch.nn as nn
    import torchvision
    torch.manual_seed(0)
    if model.startswith("torchvision"):
        net, x = torchvision.models.resnet18(num_classes=10), torch.rand(2, 3, 32, 32)
    else:
        net, x = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), torch.rand(2, 1, 8, 8)
    y = torch.tensor([1, 2])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for mode in ("attacker", "optimizer", "both"):
        with pytest.raises(ValueError, match=r"the model has no switchable ReLU .*smooth_grad=True"):
            train_mod.smooth_grad_step(net, x, y, opt, 0.1, 0.1, 1, smooth_grad=mode)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())   # refused before any step
    train_mod.smooth_grad_step(net, x, y, opt, 0.1, 0.1, 1, smooth_grad="none")   # plain training is fine
    train_mod.acts.swap_activations(net, "relu", smooth_grad=True)                           # the fix the message names
    train_mod.smooth_grad_step(net, x, y, opt, 0.1, 0.1, 1, smooth_grad="attacker")


def test_unknown_smooth_grad_mode_is_refused(train_mod):
    model = sat_models.build_model({"dataset": "digits", "model": "digitsnet", "num_classes": 10, "act": "relu", "smooth_grad": "both"})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    for typo in ("atacker", True, "Both"):
        with pytest.raises(ValueError, match="unknown smooth_grad .*; accepted: none, attacker, optimizer, both"):
            train_mod.smooth_grad_step(model, x, y, opt, 0.1, 0.1, 1, smooth_grad=typo)


INTERNAL = {"num_classes", "out"}   # filled from the data set; the run folder (--out names the runs folder)


def test_parser_is_generated_from_config(train_mod, capsys, tmp_path):
    """Every setting of Config has its flag, its help shows its default (the presets' where they differ), and
    its declared range and names are what the command line checks: one error line each, exit 2."""
    parser_flags = set(train_mod.parse_args([]).__dict__)
    fields = [f for f in dataclasses.fields(train_mod.Config) if f.name not in INTERNAL]
    assert {f.name for f in fields} <= parser_flags
    with pytest.raises(SystemExit):
        train_mod.parse_args(["--help"])
    help_text = capsys.readouterr().out
    entries = {e.split()[0]: " ".join(e.split()) for e in help_text.split("options:")[1].split("\n  --")[1:]}
    for f in fields:
        assert "default:" in entries[f.name.replace("_", "-")], f.name
    assert "default: the preset's: digits 30, cifar10 100" in " ".join(help_text.split())   # --epochs
    assert "python 03_adv_train.py --act relu" in help_text                                 # an example
    ranged = [f for f in fields if f.metadata.get("range")]
    assert {f.name for f in ranged} >= {"eps", "epochs", "batch_size", "momentum", "milestones", "seed"}
    for f in ranged:
        lo, hi = f.metadata["range"]
        bad = lo if f.metadata["lo_open"] else lo - 1
        value = str(float(bad)) if isinstance(getattr(train_mod.Config(), f.name), float) else str(int(bad))
        flag = "--" + f.name.replace("_", "-")
        code, err = run_cli(train_mod, capsys, [flag, value, "--out", str(tmp_path)])
        assert code == 2 and err.startswith(f"error: {flag} must be a finite number in ") and len(err.splitlines()) == 1, err
    for f in fields:
        if f.metadata.get("choices"):
            flag = "--" + f.name.replace("_", "-")
            code, err = run_cli(train_mod, capsys, [flag, "bogus", "--out", str(tmp_path)])
            assert code == 2 and "unknown" in err and "'bogus'; accepted: " + ", ".join(f.metadata["choices"]) in err, err
    assert not list(tmp_path.iterdir())                       # refused before any run folder
    args = train_mod.parse_args(["--momentum", "0.5", "--act", "relu", "--smooth-grad", "none", "--out", str(tmp_path)])
    assert sat_sweep.configs_from_args(train_mod, args)[0].momentum == 0.5   # the flag momentum lacked


def test_sweep_with_missing_data_is_refused_before_it_starts(train_mod, capsys, tmp_path):
    """One error line, before "10 runs, 2 at a time" and before any run folder is made."""
    code, err = run_cli(train_mod, capsys, ["--dataset", "cifar10", "--data", "/nonexistent", "--jobs", "2", "--out", str(tmp_path)])
    assert code == 2 and err == "error: no CIFAR-10 at '/nonexistent/cifar-10-batches-py'; pass --download to fetch it, " \
        "or --data to the folder holding cifar-10-batches-py/", err
    assert "runs" not in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_cifar_download_without_network_says_so(train_mod, capsys, tmp_path, monkeypatch):
    """torchvision's own download, its connection refused as on a machine without internet: one line that says
    there is no network and how to get the data, not "missing files or corrupt"."""
    import urllib.error
    import urllib.request

    def no_network(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    code, err = run_cli(train_mod, capsys, ["--dataset", "cifar10", "--data", str(tmp_path / "data"), "--download",
                                            "--act", "relu", "--smooth-grad", "none", "--out", str(tmp_path / "runs")])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: CIFAR-10 --download could not reach the network (URLError: <urlopen error [Errno -3]"), err
    assert sat_data.CIFAR10_URL in err and not list((tmp_path / "runs").glob("*"))   # no run folder
    assert not sat_data.offline(urllib.error.HTTPError(sat_data.CIFAR10_URL, 404, "Not Found", {}, None))   # a server answered


def test_the_two_times_of_a_run_are_named(train_mod, capsys, tmp_path):
    """A run's own line gives its training time (the sum of its epochs' seconds in log.csv); the summary gives
    the wall-clock time of each run, start-up included: two numbers, each saying what it is."""
    sat_cli.run_cli(train_mod.main, ["--act", "relu", "silu", "--smooth-grad", "none", "--epochs", "1", "--steps-per-epoch", "2",
                                          "--check-size", "8", "--quiet", "--jobs", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for run in ("digits_relu_s0", "digits_silu_s0"):
        history = sat_files.load_checkpoint(str(tmp_path / run / "final.pt"))["metrics"]["history"]
        assert f"{run}: trained in {sum(r['seconds'] for r in history):.1f} s (the sum of its epochs) ->" in out
    assert "2 runs in" in out and "wall-clock time of each run, start-up (data, model, process) and saving included:" in out


def test_digits_are_scikit_learns_load_digits():
    """sat_data reads the digits' CSV itself (no scikit-learn import): the same arrays as load_digits()."""
    from sklearn.datasets import load_digits
    import numpy as np
    d = load_digits()
    images, target = sat_data.load_digits()
    assert np.array_equal(images, d.images) and images.dtype == d.images.dtype
    assert np.array_equal(target, d.target)
    x, y = sat_data.digits_tensors("test")
    assert x.shape == (500, 1, 8, 8) and y.shape == (500,) and x.max() == 1.0 and x.min() == 0.0


@pytest.mark.parametrize("act, smooth_grad", [("relu", "both"), ("psoftplus", "none")])
def test_a_training_step_reads_no_tensor_value(train_mod, acts, monkeypatch, act, smooth_grad):
    """The hot path waits for no GPU: an adversarial training step (PGD-1 with a random start, the SGD update)
    reads no tensor's value on the host, which on a GPU is a sync (bench_gpu.py part 6 checks it there with
    set_sync_debug_mode). Only the random-start coin is read, a number drawn on the CPU."""
    cfg = train_mod.preset_config("digits", act=act, smooth_grad=smooth_grad)
    model = sat_models.build_model(dataclasses.asdict(cfg))
    if act == "relu":
        acts.swap_activations(model, "relu", smooth_grad=True)
    opt = train_mod.make_optimizer(model, cfg)
    x, y = sat_data.digits_tensors("train")
    x, y = x[:16], y[:16]
    eps = 64 / 255
    train_mod.smooth_grad_step(model, x, y, opt, eps, eps, 1, 1.0, smooth_grad)   # optimizer state made
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _real=real, _name=name, **k: (reads.append((_name, t.shape)), _real(t, *a, **k))[1])
    train_mod.smooth_grad_step(model, x, y, opt, eps, eps, 1, 1.0, smooth_grad)
    monkeypatch.undo()
    assert reads == [("item", torch.Size([]))], reads   # the coin
