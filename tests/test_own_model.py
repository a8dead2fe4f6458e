"""Stage 04 on a user's own model (issue 32, part 2): docs/SNIPPETS.md's loader of a stage-03 checkpoint with torch
and torchvision alone gives this repo's model, and `04_eval.py --own-model` on a trained digits checkpoint's bare
state dict gives the numbers of the stage's own run on that checkpoint. (The evaluation snippet itself runs in
tests/test_readme_snippets.py, with every other snippet that uses the repo.)"""
import os
import re

import torch

from conftest import ROOT, stage
import sat_files
import sat_models


def snippet(title):
    """The ```python block of docs/SNIPPETS.md whose first line starts with `title`."""
    blocks = re.findall(r"^```python\n(.*?)^```", open(os.path.join(ROOT, "docs", "SNIPPETS.md")).read(), flags=re.S | re.M)
    return next(b for b in blocks if b.startswith(title))


def test_checkpoint_loads_with_torchvision_alone(tmp_path):
    """A cifar10-preset checkpoint (cifar_resnet18, ReLU) as stage 03 saves it, its BatchNorm statistics moved off
    their initial values, loads through the snippet's few lines into the same function of pixels as
    sat_models.model_from_checkpoint gives; its first layer normalises with the data set's mean and std."""
    torch.manual_seed(0)
    cfg = {"dataset": "cifar10", "model": "cifar_resnet18", "act": "relu", "smooth_grad": "none", "num_classes": 10}
    model = sat_models.build_model(cfg)
    with torch.no_grad():
        model.train()(torch.rand(8, 3, 32, 32))   # running statistics of its own, not the initial 0 and 1
    path = str(tmp_path / "final.pt")
    sat_files.save_checkpoint({"kind": "final", "model": model.state_dict(), "config": cfg}, path)
    code = snippet("# torch alone: load a stage-03 checkpoint")
    assert "sat_" not in code and "sys.path" not in code and "importlib" not in code
    ns = {}
    exec(code, ns)   # the snippet as written: torch, torchvision, its own Normalize
    mine = ns["load_checkpoint"](path)
    ours, _ = sat_models.model_from_checkpoint(path)
    assert type(mine[0]).__module__ != sat_models.__name__ and not mine.training
    assert torch.allclose(mine[0].mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(mine(x), ours(x))


def run_cli(capsys, argv):
    """04_eval's command in this process: (exit code, stdout, stderr)."""
    import sat_cli
    try:
        sat_cli.run_cli(stage("04_eval").main, argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_own_model_command_gives_the_stage_own_numbers(trained_digits, tmp_path, capsys):
    """The trained digits checkpoint's weights as a user has them (a bare DigitsNet state dict, no Normalize), through
    `--own-model`, give image for image the masks of stage 04's own run on the checkpoint (the first 40 test images,
    2 APGD steps, 5 Square queries), and the same tables; bad input is one error line, exit 2."""
    _, path = trained_digits
    runs = tmp_path / "runs" / "03_adv_train" / "digits_relu_s0"
    runs.mkdir(parents=True)
    (runs / "final.pt").write_bytes(open(path, "rb").read())
    bare = {k[2:]: v for k, v in sat_files.load_checkpoint(path)["model"].items() if k.startswith("1.")}
    assert "stem.0.weight" in bare and not any(k.startswith("0.") for k in bare)
    torch.save(bare, tmp_path / "weights.pt")
    quick = ["--limit", "40", "--apgd-steps", "2", "--square-queries", "5", "--jobs", "1"]
    code, out, err = run_cli(capsys, ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "stage"), *quick])
    assert code in (0, None), err
    code, out, err = run_cli(capsys, ["--own-model", str(tmp_path / "weights.pt"), "--arch", "digitsnet", "--act", "relu",
                                      "--dataset", "digits", "--out", str(tmp_path / "own"), *quick])
    assert code in (0, None), err
    import json
    stage_run = json.load(open(tmp_path / "stage" / "per_image.json"))["digits_relu_s0"]
    own_run = json.load(open(tmp_path / "own" / "per_image.json"))["weights"]
    for k in ("clean", "pgd200", "worst"):
        assert own_run[k] == stage_run[k] and len(own_run[k]) == 40, k
    for f in ("results.md", "results.csv", "per_run.csv"):
        assert (tmp_path / "own" / f).is_file(), f
    assert "digits relu (own model)" in open(tmp_path / "own" / "results.md").read()
    for argv, words in ((["--own-model", str(tmp_path / "nothing.pt")], "no such file"),
                        (["--own-model", str(tmp_path / "weights.pt"), "--dataset", "cifar10"], "does not fit --arch"),
                        (["--own-model", str(tmp_path / "weights.pt"), "--arch", "resnet18"], "does not fit dataset")):
        code, out, err = run_cli(capsys, argv + ["--out", str(tmp_path / "bad")])
        assert code == 2 and err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_own_state_dict_forms_load_alike(trained_digits, tmp_path):
    """--own-model takes this repo's Sequential(Normalize, net) keys, a bare network's keys (the data set's mean and std
    put in front), a DDP "module." prefix, or a dict holding one under "model": each gives the same checkpoint."""
    import argparse
    import sat_eval_run
    _, path = trained_digits
    wrapped = sat_files.load_checkpoint(path)["model"]
    bare = {k[2:]: v for k, v in wrapped.items() if k.startswith("1.")}
    forms = {"wrapped": wrapped, "bare": bare, "ddp": {f"module.{k}": v for k, v in bare.items()}, "dict": {"model": bare}}
    saved = {}
    for name, sd in forms.items():
        torch.save(sd, tmp_path / f"{name}.pt")
        args = argparse.Namespace(own_model=str(tmp_path / f"{name}.pt"), arch="digitsnet", act="relu", dataset="digits",
                                  data=None, eps=None, out=str(tmp_path / "out"))
        ckpt = sat_files.load_checkpoint(sat_eval_run.own_checkpoint(args))
        assert ckpt["config"]["eps"] == 64.0 and ckpt["config"]["num_classes"] == 10 and ckpt["config"]["width"] == 16
        saved[name] = ckpt["model"]
    for name in forms:
        assert saved[name].keys() == wrapped.keys() and all(torch.equal(saved[name][k], wrapped[k]) for k in wrapped), name
