"""The validation split and early stopping (Rice et al. 2020): held-out training images that training never
sees, the per-epoch check on them, best.pt = the epoch of the best validation PGD-10, stage 04's
--checkpoint best."""
import importlib
import os

import pytest
import torch

import sat_cli
import sat_data
import sat_files


def cfg_digits(train_mod, out, **kw):
    kw = {"epochs": 3, "milestones": [], "check_size": 100, "val_size": 100, "out": str(out), **kw}
    return train_mod.preset_config("digits", **kw)


def test_split_is_class_balanced_disjoint_fixed_and_unaugmented():
    train_ds = sat_data.get_dataset("digits", "train")
    tr, val = sat_data.validation_split(train_ds, train_ds, 105)
    assert len(val) == 105 and len(tr) == len(train_ds) - 105
    assert not set(tr.indices) & set(val.indices)
    counts = torch.bincount(sat_data.labels_of(train_ds)[val.indices], minlength=10)
    assert counts.tolist() == [11] * 5 + [10] * 5          # 105 / 10 classes: the remainder to the first classes
    _, again = sat_data.validation_split(train_ds, train_ds, 105)
    assert again.indices == val.indices                     # the same images for every run
    assert sat_data.validation_split(train_ds, train_ds, 0) == (train_ds, None)
    with pytest.raises(sat_cli.UserError, match="--val-size 5000"):
        sat_data.validation_split(train_ds, train_ds, 5000)


def test_cifar_validation_images_come_without_augmentation(tmp_path, monkeypatch):
    import torchvision.datasets.cifar
    from test_train import _write_fake_cifar   # a tiny folder in CIFAR-10's on-disk format
    _write_fake_cifar(tmp_path)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    aug = sat_data.get_dataset("cifar10", "train", str(tmp_path))
    plain = sat_data.get_dataset("cifar10", "train", str(tmp_path), augment=False)
    tr, val = sat_data.validation_split(aug, plain, 5)
    assert all(torch.equal(val[i][0], val[i][0]) for i in range(5))   # no random crop or flip in the check
    assert any(not torch.equal(tr[i][0], tr[i][0]) for i in range(len(tr)))   # the training images keep theirs


def test_training_with_a_validation_split_never_reads_the_test_split(train_mod, tmp_path, monkeypatch):
    read = []
    real = sat_data.get_dataset
    monkeypatch.setattr(sat_data, "get_dataset", lambda name, split, *a, **k: read.append(split) or real(name, split, *a, **k))
    train_mod.train(cfg_digits(train_mod, tmp_path / "run", epochs=1), quiet=True)
    assert read and "test" not in read
    read.clear()
    train_mod.train(cfg_digits(train_mod, tmp_path / "mon", epochs=1, val_size=0), quiet=True)
    assert "test" in read                                   # without one, the check reads test images (a monitor)


def test_best_pt_holds_the_epoch_of_the_best_validation_pgd10(train_mod, tmp_path):
    final = train_mod.train(cfg_digits(train_mod, tmp_path / "run"), quiet=True)
    best = os.path.join(os.path.dirname(final), "best.pt")
    f, b = sat_files.load_checkpoint(final), sat_files.load_checkpoint(best)
    hist = f["metrics"]["history"]
    pgd10 = [r["check_pgd10_acc"] for r in hist]
    assert b["epoch"] == 1 + pgd10.index(max(pgd10)) and b["selected"] == "best"
    assert b["metrics"]["history"] == hist[:b["epoch"]]
    if b["epoch"] == len(hist):
        assert all(torch.equal(b["model"][k], f["model"][k]) for k in f["model"])
    # a model chosen on the validation split, never on the test images: the config says which images were held out
    assert b["config"]["val_size"] == 100


def test_best_pt_is_the_same_after_a_resume_and_a_fresh_start_removes_a_stale_one(train_mod, tmp_path):
    straight = train_mod.train(cfg_digits(train_mod, tmp_path / "a"), quiet=True)
    cfg = cfg_digits(train_mod, tmp_path / "b")
    train_mod.train(cfg, stop_after_epoch=2, quiet=True)
    resumed = train_mod.train(cfg, resume=True, quiet=True)
    a = sat_files.load_checkpoint(os.path.join(os.path.dirname(straight), "best.pt"))
    b = sat_files.load_checkpoint(os.path.join(os.path.dirname(resumed), "best.pt"))
    assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # retrained without a validation split (--force): the old run's best.pt must not survive beside the new final.pt
    train_mod.train(cfg_digits(train_mod, tmp_path / "b", val_size=0, epochs=1), force=True, quiet=True)
    assert not os.path.exists(os.path.join(os.path.dirname(resumed), "best.pt"))


def test_stage04_evaluates_best_pt_in_tables_of_its_own(train_mod, tmp_path, capsys):
    for act in ("relu", "silu"):
        train_mod.train(cfg_digits(train_mod, tmp_path / "runs" / "03_adv_train" / f"digits_{act}_s0", act=act, epochs=2), quiet=True)
    train_mod.train(cfg_digits(train_mod, tmp_path / "runs" / "03_adv_train" / "noval", epochs=1, val_size=0), quiet=True)
    ev = importlib.import_module("04_eval")
    out = tmp_path / "ev"
    ev.main(["--runs", str(tmp_path / "runs"), "--out", str(out), "--checkpoint", "best", "--limit", "20",
             "--apgd-steps", "2", "--square-queries", "5"])
    printed = capsys.readouterr().out
    assert "1 run(s) without a validation split have no best.pt" in printed
    md = (out / "results.md").read_text()
    assert "digits relu [best epoch]" in md and "digits silu [best epoch]" in md
    assert ",best," in (out / "per_run.csv").read_text()
    with pytest.raises(SystemExit) as e:
        sat_cli.run_cli(ev.main, ["--runs", str(tmp_path / "runs" / "03_adv_train" / "noval"), "--out", str(out),
                                       "--checkpoint", "best"])
    assert e.value.code == 2 and "no best.pt" in capsys.readouterr().err


def test_final_and_best_in_one_table_and_a_best_equal_to_final_reuses_its_result(train_mod, tmp_path, capsys):
    runs = tmp_path / "runs" / "03_adv_train"
    train_mod.train(cfg_digits(train_mod, runs / "digits_relu_s0", epochs=1), quiet=True)   # best.pt = epoch 1 = final
    ev = importlib.import_module("04_eval")
    ev.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "ev"), "--checkpoint", "final", "best",
             "--limit", "20", "--apgd-steps", "2", "--square-queries", "5", "--jobs", "1"])
    rows = [line.split("\r")[-1].split() for line in capsys.readouterr().out.splitlines()]   # progress bars end in \r
    lines = [" ".join(r) for r in rows if r and r[0] in ("digits_relu_s0", "digits_relu_s0@best")]
    assert [line.split()[0] for line in lines] == ["digits_relu_s0", "digits_relu_s0@best"]
    assert lines[1].split()[-2] == "cache"                          # the same weights: final.pt's result, not re-run
    assert lines[0].split()[1:11] == lines[1].split()[1:11]          # every accuracy the same
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "| digits relu |" in md and "| digits relu [best epoch] |" in md
