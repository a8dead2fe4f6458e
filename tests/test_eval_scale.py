"""Stage 04 at scale: sharded over processes (torchrun, gloo) with the same per-image results as one process and
another --batch-size; a SIGKILL mid-checkpoint then a rerun gives the tables of an uninterrupted run; two recipes
of one activation are two rows; --subset robustbench; TF32 off; every eps point kept; the adaptive attacker."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import sat_data
import sat_eval_run
import sat_files
import sat_report
import sat_smoke
from conftest import ROOT, stage

ev = stage("04_eval")
QUICK = ["--limit", "20", "--block", "5", "--apgd-steps", "3", "--square-queries", "10"]


def runs_with(tmp_path, path, names=("digits_relu_s0",), edit=None):
    """A runs/03_adv_train folder holding copies of the checkpoint at path (edit(config) changes a copy's config)."""
    for name in names:
        d = tmp_path / "runs" / "03_adv_train" / name
        d.mkdir(parents=True)
        ckpt = torch.load(path, weights_only=True)
        if edit:
            edit(name, ckpt["config"])
        sat_files.save_checkpoint(ckpt, str(d / "final.pt"))
    return tmp_path / "runs"


def run(args, cwd, env=None):
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def cached_results(out):
    return {p.name: json.loads(p.read_text())["result"] for p in sorted((out / "cache").glob("*.json"))}


def test_torchrun_two_processes_and_another_batch_size_give_identical_per_image_results(trained_digits, tmp_path, warm_python):
    runs = runs_with(tmp_path, trained_digits[1], ("digits_relu_s0", "digits_relu_s1"))
    ev_py = [f"{ROOT}/04_eval.py", "--runs", str(runs)] + QUICK
    ev.main(ev_py[1:] + ["--out", str(tmp_path / "one"), "--jobs", "1"])   # one process: this one
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         *ev_py, "--out", "two", "--batch-size", "7"], tmp_path, warm_python(os.environ))
    one, two = cached_results(tmp_path / "one"), cached_results(tmp_path / "two")
    assert len(one) == 2 and one.keys() == two.keys()
    for k in one:
        assert one[k]["per_image"] == two[k]["per_image"], k   # every attack, every image
        assert one[k] == two[k]
        assert len(one[k]["per_image"]["pgd200"]) == 20
    assert (tmp_path / "one" / "per_run.csv").read_text() == (tmp_path / "two" / "per_run.csv").read_text()


def test_sigkill_mid_checkpoint_then_rerun_gives_the_uninterrupted_tables(trained_digits, tmp_path):
    runs = runs_with(tmp_path, trained_digits[1])
    cmd = [sys.executable, f"{ROOT}/04_eval.py", "--runs", str(runs), "--jobs", "1", "--limit", "36", "--block", "3",
           "--apgd-steps", "3", "--square-queries", "10"]
    ev.main(cmd[2:] + ["--out", str(tmp_path / "whole")])   # uninterrupted, in this process
    p = subprocess.Popen(cmd + ["--out", "killed"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    parts = tmp_path / "killed" / "cache"
    t = time.time()
    while len(list(parts.glob("*/block-*.json"))) < 3 and time.time() - t < 120 and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "the evaluation ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    saved = len(list(parts.glob("*/block-*.json")))
    assert 3 <= saved < 12 and not (tmp_path / "killed" / "results.csv").exists()
    run(cmd + ["--out", "killed"], tmp_path)
    for name in ("results.csv", "per_run.csv", "results.md"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    assert not list(parts.glob("*/block-*.json"))   # the parts go once the checkpoint's result is saved


def test_two_recipes_of_one_activation_are_two_rows_named_by_what_differs(trained_digits, tmp_path, monkeypatch):
    """The grouping, not the attacks, is tested: smoke-sized attacks (4 images, PGD cut to 1 step)."""
    monkeypatch.setattr(sat_smoke, "SMOKE", True)
    def edit(name, cfg):   # the same weights, stored as two recipes (batch 64 and batch 128), two seeds each
        cfg["batch_size"], cfg["seed"] = (128 if "b128" in name else 64), int(name[-1])
    runs = runs_with(tmp_path, trained_digits[1], ("digits_relu_s0", "digits_relu_s1", "digits_relu_b128_s0",
                                                   "digits_relu_b128_s1"), edit)
    ev.main(["--runs", str(runs), "--out", str(tmp_path / "e"), "--jobs", "1"] + QUICK)
    rows = list(csv.DictReader(open(tmp_path / "e" / "results.csv")))
    assert sorted(r["configuration"] for r in rows) == ["digits relu (batch_size=128)", "digits relu (batch_size=64)"]
    assert all(r["seeds"] == "2" for r in rows)
    assert not (tmp_path / "e" / "comparisons.csv").exists()   # both ReLU: neither is compared with the other


def test_recipe_leaves_out_the_seed_and_the_bookkeeping_and_labels_stay_short_when_nothing_differs():
    cfg = {"dataset": "digits", "model": "digitsnet", "act": "silu", "seed": 3, "out": "runs/x", "workers": 2, "width": 16}
    assert sat_report.recipe(cfg) == {"act": "silu", "dataset": "digits", "model": "digitsnet", "width": 16, "val_size": 0}
    r = {"dataset": "imagenet", "act": "silu", "smooth_grad": "none", "train_attack": "pgd-1"}
    rs = [dict(r, recipe={"model": m, "act": "silu"}) for m in ("resnet50", "resnet101")] + \
         [dict(r, act="relu", recipe={"model": "resnet50", "act": "relu"})]
    labels = sorted(sat_report.config_labels(rs).values())
    assert labels == ["imagenet relu", "imagenet silu (model=resnet101)", "imagenet silu (model=resnet50)"]


def test_subset_robustbench_picks_the_listed_files(tmp_path):
    from PIL import Image
    ids = [line.strip() for line in open(sat_report.ROBUSTBENCH_IDS) if line.strip() and not line.startswith("#")]
    assert len(ids) == 5000 and len(set(ids)) == 5000
    listed, unlisted = ids[:3], ["n01440764/ILSVRC2012_val_99999999.JPEG", ids[3].split("/")[0] + "/not_listed.JPEG"]
    for rel in listed + unlisted:
        (tmp_path / "val" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (30, 60, 90)).save(tmp_path / "val" / rel)
    (tmp_path / "train").mkdir()
    ds = sat_report.test_images({"dataset": "imagenet", "image_size": 32}, str(tmp_path), 0, "robustbench")
    picked = sorted(os.path.relpath(ds.dataset.samples[i][0], tmp_path / "val").replace(os.sep, "/") for i in ds.indices)
    assert picked == sorted(listed)
    assert len(sat_report.test_images({"dataset": "imagenet", "image_size": 32}, str(tmp_path), 0, "all")) == 5


def test_attacks_run_at_full_precision():
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("medium")
        sat_eval_run.attacks_at_full_precision()
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])


@pytest.fixture(scope="module")
def small_eval(trained_digits):
    x, y = sat_data.digits_tensors("test")
    return ev.evaluate_model(trained_digits[0], x[:30], y[:30], 64 / 255, 10, apgd_steps=3, square_queries=10, block=10)


def test_every_eps_point_is_kept_and_the_whole_box_is_said(small_eval):
    assert list(small_eval["eps_curve"]) == ["32", "64", "128", "256", "512"]   # x4 and x8 both clip to 255/255
    assert "whole pixel box" in small_eval["params"]["eps_x4"] and "whole pixel box" in small_eval["params"]["eps_x8"]
    assert "whole pixel box" not in small_eval["params"]["eps_x2"]


def test_adaptive_attack_runs_on_relu_models_and_counts_in_the_worst_case(trained_digits, small_eval):
    model = trained_digits[0]
    assert ev.has_relu(model)
    smooth = ev.smooth_backward_copy(model)
    x, _ = sat_data.digits_tensors("test")
    assert torch.equal(model(x[:50]), smooth(x[:50]))   # the same forward, bit for bit
    assert "through the smooth backward" in small_eval["params"]["pgd200_sg"]
    assert small_eval["worst"] <= small_eval["pgd200_sg"] and "pgd200_sg" in small_eval["params"]["worst"]
    silu = ev.copy.deepcopy(model)
    assert stage("01_activations").swap_activations(silu, "silu") and not ev.has_relu(silu)   # no ReLU: not run


def attack_settings(block):
    """Stage 04's default attack settings, with `block` images per block."""
    return sat_eval_run.attack_settings(autoattack=False, square_queries=ev.SQUARE_QUERIES, apgd_steps=ev.APGD_STEPS, seed=0,
                                        max_pgd_steps=None, block=block)


def test_cache_key_holds_what_changes_a_result_and_not_the_batch_size(trained_digits, tmp_path):
    import argparse
    path = trained_digits[1]
    args = argparse.Namespace(data=None, subset="all", limit=40, eps=None, batch_size=7)
    cfg = torch.load(path, weights_only=True)["config"]
    s = attack_settings(block=10)
    key = sat_report.cache_key(path, args, cfg, s)
    assert key == sat_report.cache_key(path, argparse.Namespace(**{**vars(args), "batch_size": 500}), cfg, s)
    assert "batch_size" not in json.dumps(key) and "jobs" not in json.dumps(key)
    assert key != sat_report.cache_key(path, argparse.Namespace(**{**vars(args), "limit": 41}), cfg, s)
    assert key != sat_report.cache_key(path, args, cfg, attack_settings(block=20))
    other = tmp_path / "retrained.pt"   # the same path retrained: other content, other key
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    sat_files.save_checkpoint(ckpt, str(other))
    assert sat_report.cache_key(str(other), args, cfg, s)["sha256"] != key["sha256"]


def test_autoattack_is_the_reference_one_and_counts_in_the_worst_case(trained_digits):
    x, y = sat_data.digits_tensors("test")
    r = ev.evaluate_model(trained_digits[0], x[:12], y[:12], 64 / 255, 10, apgd_steps=3, square_queries=10, block=12,
                          autoattack=True)
    assert r["params"]["autoattack"].startswith("pyautoattack.AutoAttack standard")
    assert "autoattack" in r["params"]["worst"] and r["worst"] <= r["autoattack"] <= r["clean"]
