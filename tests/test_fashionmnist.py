"""Fashion-MNIST: the idx .gz reader on tiny generated files in the original format (counts, shapes, labels,
pixel range, both folder layouts), one training run through stage 03's command line and its evaluation
through stage 04's, the model, and one-line errors for missing or broken files. The real files, where
`apt-get install dataset-fashion-mnist` put them, are checked for their published counts."""
import gzip
import os
import struct

import numpy as np
import pytest
import torch

import sat_cli
import sat_data
import sat_files
import sat_models
from conftest import stage

SYSTEM_FOLDER = "/usr/share/datasets/fashion-mnist"   # Debian/Ubuntu's dataset-fashion-mnist package


def write_idx_gz(path, array, magic):
    """An idx file as Zalando ships it: big-endian int32 magic and dimensions, then the uint8 data, gzipped."""
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape) + array.tobytes())


def write_fake_fashion(folder, n_train=24, n_test=8, seed=0):
    """The four files of Fashion-MNIST with random pixels and labels 0, 1, ..., 9, 0, 1, ...; returns the arrays."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.randint(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        images_file, labels_file = sat_data.FASHION_FILES[split]
        write_idx_gz(os.path.join(folder, images_file), images, 2051)
        write_idx_gz(os.path.join(folder, labels_file), labels, 2049)
        arrays[split] = (images, labels)
    return arrays


def run_cli(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        sat_cli.run_cli(main, argv)
    return e.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_reader_counts_shapes_labels_and_pixels(tmp_path, layout):
    """Both layouts: the .gz files in --data itself (the Debian folder) or in --data/FashionMNIST/raw/."""
    folder = tmp_path / "fm" if layout == "flat" else tmp_path / "fm" / "FashionMNIST" / "raw"
    arrays = write_fake_fashion(folder)
    for split, n in (("train", 24), ("test", 8)):
        ds = sat_data.get_dataset("fashionmnist", split, str(tmp_path / "fm"))
        x, y = ds.tensors
        assert len(ds) == n and x.shape == (n, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
        assert 0 <= x.min() and x.max() <= 1
        images, labels = arrays[split]
        assert torch.equal(x[:, 0], torch.from_numpy(images).float() / 255)   # pixel k -> k/255 exactly
        assert y.tolist() == labels.tolist()
    assert sat_data.num_classes_of("fashionmnist", ds) == 10


def test_reader_works_on_a_read_only_folder(tmp_path):
    write_fake_fashion(tmp_path / "ro")
    os.chmod(tmp_path / "ro", 0o555)   # like /usr/share/datasets/fashion-mnist: nothing is written there
    try:
        assert len(sat_data.get_dataset("fashionmnist", "test", str(tmp_path / "ro"))) == 8
        assert sorted(os.listdir(tmp_path / "ro")) == sorted(f for pair in sat_data.FASHION_FILES.values() for f in pair)
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_model_fits_28x28_and_torchvision_models_are_refused():
    model = sat_models.build_model({"dataset": "fashionmnist", "model": "fashionnet", "num_classes": 10, "act": "silu"})
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == 19706          # the digits model's weights, stride-2 stem
    assert model[1].stem[0].stride == (2, 2)
    with pytest.raises(sat_cli.UserError, match="model 'resnet18' does not fit dataset 'fashionmnist' \\(1 channel\\); use fashionnet"):
        sat_models.check_model_name("resnet18", "fashionmnist")
    with pytest.raises(sat_cli.UserError, match="model 'digitsnet' does not fit dataset 'fashionmnist'"):
        sat_models.check_model_name("digitsnet", "fashionmnist")


def test_train_then_evaluate_through_the_command_lines(tmp_path, capsys):
    write_fake_fashion(tmp_path / "fm")
    train_args = ["--dataset", "fashionmnist", "--data", str(tmp_path / "fm"), "--act", "relu", "--smooth-grad", "none",
                  "--epochs", "1", "--milestones", "--batch-size", "8", "--check-size", "8", "--val-size", "4", "--quiet",
                  "--out", str(tmp_path / "runs")]
    sat_cli.run_cli(stage("03_adv_train").main, train_args)
    ckpt = sat_files.load_checkpoint(str(tmp_path / "runs" / "fashionmnist_relu_s0" / "final.pt"))
    cfg = ckpt["config"]
    assert (cfg["model"], cfg["eps"], cfg["attack_steps"], cfg["attack_step"], cfg["num_classes"], cfg["threads"]) == \
        ("fashionnet", 25.5, 2, 31.875, 10, 1)
    assert len(ckpt["metrics"]["history"]) == 1 and np.isfinite(ckpt["metrics"]["history"][0]["loss"])
    out = capsys.readouterr().out
    assert "2 steps/epoch" in out   # 24 training images less 4 held out for validation: 20, in full batches of 8
    assert "on 4 validation images" in out and os.path.isfile(tmp_path / "runs" / "fashionmnist_relu_s0" / "best.pt")
    sat_cli.run_cli(stage("04_eval").main, ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "eval"), "--limit", "6",
                                           "--batch-size", "6", "--apgd-steps", "2", "--square-queries", "5"])
    out = capsys.readouterr().out
    assert "fashionmnist_relu_s0" in out and "25.5/255" in out
    per_run = (tmp_path / "eval" / "per_run.csv").read_text()
    assert "fashionmnist_relu_s0,fashionmnist,fashionnet,relu,none,pgd,0,25.5,6," in per_run


def test_preset_step_follows_eps_unless_given():
    """The preset trains with PGD-2 of step 1.25 x eps (2.5 x eps / k), also for another --eps; --attack-step
    and --attack-steps win; digits keeps the paper's PGD-1."""
    train_mod = stage("03_adv_train")
    assert train_mod.preset_config("fashionmnist").attack_steps == 2
    assert train_mod.preset_config("fashionmnist", attack_steps=1).attack_steps == 1
    assert train_mod.preset_config("digits").attack_steps == 1
    assert train_mod.preset_config("fashionmnist").attack_step == 1.25 * 25.5
    assert train_mod.preset_config("fashionmnist", eps=51.0).attack_step == 1.25 * 51
    assert train_mod.preset_config("fashionmnist", attack_step=10.0).attack_step == 10.0
    assert train_mod.preset_config("digits").attack_step == 0.0   # 0: stage 02's default, eps for PGD-1


@pytest.mark.parametrize("stage_name", ["03_adv_train", "04_eval"])
def test_missing_files_are_one_error_line(tmp_path, capsys, stage_name):
    """Stage 03 given a folder without the files, stage 04 given a checkpoint whose data has gone."""
    (tmp_path / "empty").mkdir()
    if stage_name == "03_adv_train":
        argv = ["--dataset", "fashionmnist", "--data", str(tmp_path / "empty"), "--act", "relu", "--smooth-grad", "none",
                "--out", str(tmp_path / "runs")]
    else:
        write_fake_fashion(tmp_path / "fm")
        sat_cli.run_cli(stage("03_adv_train").main, ["--dataset", "fashionmnist", "--data", str(tmp_path / "fm"), "--act", "relu",
                                                    "--smooth-grad", "none", "--epochs", "1", "--batch-size", "8",
                                                    "--check-size", "8", "--val-size", "0", "--quiet", "--out", str(tmp_path / "runs")])
        argv = ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "eval"), "--data", str(tmp_path / "empty")]
    code, err = run_cli(stage(stage_name).main, argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: no Fashion-MNIST in '{tmp_path / 'empty'}' (nor in its FashionMNIST/raw/): it needs "
                          "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"), err
    assert "apt-get install dataset-fashion-mnist" in err and "--download" in err


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "foreign idx"])
def test_broken_file_is_one_error_line_naming_it(tmp_path, capsys, damage):
    write_fake_fashion(tmp_path / "fm")
    bad = tmp_path / "fm" / "train-images-idx3-ubyte.gz"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:100])
    elif damage == "not gzip":
        bad.write_bytes(b"<html>404 Not Found</html>")
    else:   # a labels file where the images should be
        write_idx_gz(bad, np.zeros(24, np.uint8), 2049)
    code, err = run_cli(stage("03_adv_train").main, ["--dataset", "fashionmnist", "--data", str(tmp_path / "fm"), "--act", "relu",
                                                     "--smooth-grad", "none", "--out", str(tmp_path / "runs")], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and f"error: '{bad}'" in err and "replace it with the original file" in err, err
    assert not list(tmp_path.rglob("*.pt"))


@pytest.mark.skipif(not os.path.isdir(SYSTEM_FOLDER), reason="apt-get install dataset-fashion-mnist not done here")
def test_the_real_files_hold_the_published_counts():
    """60,000 training and 10,000 test images, 6,000 and 1,000 of each of the 10 classes (~2 s)."""
    for split, per_class in (("train", 6000), ("test", 1000)):
        x, y = sat_data.fashion_mnist_tensors(split, SYSTEM_FOLDER)
        assert x.shape == (10 * per_class, 1, 28, 28) and 0 <= x.min() < x.max() <= 1
        assert torch.bincount(y).tolist() == [per_class] * 10


@pytest.mark.parametrize("network", ["up", "down"])
def test_download_goes_through_torchvision_into_its_layout(tmp_path, capsys, monkeypatch, network):
    """--download calls torchvision's FashionMNIST(root, download=True): with the network up, here a stand-in that
    writes the generated files where torchvision puts them (root/FashionMNIST/raw/); down, torchvision's own
    download with every connection failing as it does offline (each mirror tried, a RuntimeError at the end)."""
    import urllib.error
    import urllib.request

    import torchvision

    def fake_fashion_mnist(root, train=True, download=False):
        write_fake_fashion(os.path.join(root, "FashionMNIST", "raw"))

    def no_network(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    if network == "up":
        monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_fashion_mnist)
        assert len(sat_data.get_dataset("fashionmnist", "train", str(tmp_path / "data"), download=True)) == 24
        return
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    code, err = run_cli(stage("03_adv_train").main, ["--dataset", "fashionmnist", "--data", str(tmp_path / "data"), "--download",
                                                     "--act", "relu", "--smooth-grad", "none", "--out", str(tmp_path / "runs")], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "error: Fashion-MNIST --download could not reach the network (RuntimeError: Error downloading" in err
    assert "apt-get install dataset-fashion-mnist" in err
