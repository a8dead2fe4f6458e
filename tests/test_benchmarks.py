"""benchmarks/bench_gpu.py, the script of the GPU numbers, at toy sizes on the CPU (--quick): every part runs and
writes its rows, and the figures it derives agree with the ones it measured. Its GPU figures need a GPU
(benchmarks/gpu_check.sh); this keeps the script from breaking while no GPU is at hand."""
import csv
import json
import math
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import bench_gpu  # noqa: E402
from bench_eval_scaling import passes_per_image  # noqa: E402


@pytest.fixture(scope="module")
def quick_rows(tmp_path_factory):
    """The command of docs/SCALING.md, `python benchmarks/bench_gpu.py --quick`, as written (test_readme_commands
    leaves it to this file), with runs/ in a scratch folder: its rows, read back from the CSV it wrote there."""
    import sat_files
    runs = tmp_path_factory.mktemp("runs")
    saved, sat_files.RUNS_DIR = sat_files.RUNS_DIR, str(runs)
    try:
        bench_gpu.ROWS.clear()
        bench_gpu.main(["--quick"])
    finally:
        sat_files.RUNS_DIR = saved
    out = runs / "benchmarks"
    with open(out / "gpu_numbers_cpu.csv") as f:
        rows = list(csv.DictReader(f))
    return {(r["part"], r["setting"]): r for r in rows}, out


def value(rows, part, setting):
    return float(rows[(part, setting)]["value"])


def test_every_part_writes_its_rows(quick_rows):
    rows, out = quick_rows
    assert len(rows) == len(bench_gpu.ROWS)   # the CSV has every row printed, written as each was measured
    assert {part for part, _ in rows} == {"setup", "train", "batch", "eval", "precision", "loader", "profile"}
    rates = [value(rows, *k) for k, r in rows.items() if r["unit"] == "img/s"]
    assert len(rates) >= 12 and all(math.isfinite(v) and v > 0 for v in rates)
    compiled = "bf16 + channels_last + compile"   # --quick traces it with dynamo's eager backend
    assert rows[("setup", "torch.compile backend")]["value"] == "eager"
    assert value(rows, "train", f"{compiled}: PGD-1 adversarial images/s") > 0
    fastest = rows[("train", "fastest setting (eager)")]["value"]
    assert fastest in ("fp32", "bf16 + channels_last")
    if ("train", "fastest setting (with torch.compile)") in rows:
        fastest = rows[("train", "fastest setting (with torch.compile)")]["value"]
        assert fastest == compiled
    eager_best = max(("fp32", "bf16 + channels_last"), key=lambda s: value(rows, "train", f"{s}: PGD-1 adversarial images/s"))
    assert value(rows, "train", f"{eager_best}: PGD-1 step, relu, time / ReLU's") == 1.0
    assert ("train", f"{eager_best}: PGD-1 step, silu, time / ReLU's") in rows
    assert value(rows, "loader", "torchvision decode_jpeg on cpu + crop there: images/s") > 0   # nvjpeg's code, on the CPU
    assert 90 < value(rows, "loader", "mean JPEG size") < 130   # KB: as large as ImageNet's JPEGs, ~110 KB
    cifar = value(rows, "train", f"cifar10 preset (cifar_resnet18, batch 4), {eager_best}: PGD-1 images/s")
    assert value(rows, "train", "cifar10 preset: 100 epochs of 40000 images, 1 GPU (steps alone)") == \
        pytest.approx(100 * 40000 / cifar / 3600)
    rate = value(rows, "train", f"{fastest}: PGD-1 adversarial images/s")
    assert value(rows, "loader", f"CPU cores (loader workers) to feed {fastest} ({rate:.0f} img/s)") > 0
    for gpus in (1, 8):
        hours = value(rows, "train", f"the paper's 100 epochs, {fastest}, {gpus} GPU(s)")
        assert hours == pytest.approx(100 * 1_281_167 / rate / gpus / 3600)
    top = [float(r["value"]) for (part, setting), r in rows.items() if part == "profile" and setting.startswith("top ")]
    assert len(top) == 5 and top == sorted(top, reverse=True) and top[0] > 0
    trace = os.path.join(ROOT, rows[("profile", "Chrome trace of one adversarial step")]["value"])
    assert os.path.dirname(os.path.abspath(trace)) == str(out)
    with open(trace) as f:
        assert any("convolution" in e.get("name", "") for e in json.load(f)["traceEvents"])


def test_derived_figures_follow_from_the_measured_ones(quick_rows):
    rows, _ = quick_rows
    fb, fw = (value(rows, "eval", f"ResNet-50 {k} per image") / 1e3 for k in ("forward-backward (input only)", "forward"))
    n_fb, n_fw = passes_per_image()
    per_image = value(rows, "eval", "whole attack set per image, at most")
    assert per_image == pytest.approx(n_fb * fb + n_fw * fw)
    for n in (5000, 50000):
        for gpus in (1, 8):
            hours = value(rows, "eval", f"whole attack set, {n} images, {gpus} GPU(s), at most")
            assert hours == pytest.approx(per_image * n / gpus / 3600)
    for setting in ("fp32", "bf16 + channels_last"):
        ratio = value(rows, "train", f"{setting}: adversarial/standard time")
        assert ratio == pytest.approx(value(rows, "train", f"{setting}: standard images/s")
                                      / value(rows, "train", f"{setting}: PGD-1 adversarial images/s"))
    name = "digits_relu"
    f32, b16 = (value(rows, "precision", f"{name}: PGD-200 robust accuracy, {k}") for k in ("float32, TF32 off", "bf16 autocast"))
    assert 0 <= f32 <= 100 and 0 <= b16 <= 100
    assert value(rows, "precision", f"{name}: bf16 minus float32 (positive: bf16 attack weaker)") == pytest.approx(b16 - f32)


def test_time_limit_skips_new_models_and_says_so():
    """Past the deadline no new model is started (each compiled one takes minutes on a GPU): a row says so."""
    import time
    bench_gpu.ROWS.clear()   # ReLU's step, measured in part 1, is the base; SiLU's model would not finish in time
    bench_gpu.part_acts(bench_gpu.torch.device("cpu"), 32, 2, "fp32", ["relu", "silu"], 1, 0,
                        deadline=time.monotonic() + 30, relu_sec=0.5, per_model_s=60)
    assert [r[2] for r in bench_gpu.ROWS] == [1.0, 4.0, "skipped: --time-limit"]


@pytest.mark.parametrize("argv, names", [(["--parts", "7"], "--parts 7"), (["--batch", "0"], "--batch"),
                                         (["--parts", "1,x"], "--parts 1,x"), (["--time-limit", "-1"], "--time-limit"),
                                         (["--parts", "4", "--digits-runs", "/nonexistent"], "no final.pt")])
def test_bad_arguments_are_one_error_line(argv, names, capsys):
    with pytest.raises(SystemExit) as e:
        bench_gpu.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and names in err and len(err.splitlines()) == 1


def test_an_error_in_one_part_is_a_row_and_the_next_parts_run(tmp_path, monkeypatch):
    """On the GPU the script runs once, time-boxed: a part that fails (nvjpeg, a loader worker, a compile) is a
    row saying so, and the parts after it still run; bad input still stops it with one error line."""
    import sat_cli

    def broken_loader(*args, **kwargs):
        raise RuntimeError("nvjpeg: hardware backend unavailable\nsecond line")
    monkeypatch.setattr(bench_gpu, "part_loader", broken_loader)
    bench_gpu.ROWS.clear()
    bench_gpu.main(["--quick", "--parts", "5,6", "--csv", str(tmp_path / "g.csv")])
    rows = {(p, s): v for p, s, v, _ in bench_gpu.ROWS}
    assert rows[("loader", "error in broken_loader")] == "RuntimeError: nvjpeg: hardware backend unavailable"
    assert any(p == "profile" and s.startswith("top 1") for p, s in rows)   # part 6 ran after it
    with open(tmp_path / "g.csv") as f:
        assert "error in broken_loader" in f.read()

    def bad_input():
        raise sat_cli.UserError("--digits-runs x: no final.pt under it")
    with pytest.raises(sat_cli.UserError):
        bench_gpu.guarded("eval", bad_input)
