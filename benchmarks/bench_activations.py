"""Is SAT "for free"? The cost of each activation in stage 03's PGD-1 adversarial training step, as a ratio to ReLU's.

The paper says smooth activations improve robustness at no extra cost. This times adversarial_training_step
(PGD-1 attack + training step, the paper's recipe) with every activation of stage 01 in the same model and
batch: the digits model and the CIFAR ResNet-18 on the CPU, and ResNet-50 (224 px, bf16) on a GPU when one
is present. Target: every smooth activation <= 1.05 x ReLU.

Ratios are measured within one run: the activations alternate, repeat after repeat (benchmarks/timing.py),
and each ratio is the median over repeats of (activation's step time / ReLU's step time in the same repeat),
so load on the machine hits all alike; the spread over repeats is printed beside it. One torch thread.

Run it (from anywhere):
    python benchmarks/bench_activations.py            # ~2.5 min (one core of the 2-core CPU machine)
    python benchmarks/bench_activations.py --quick    # fewer repeats, ~1.5 min
    python benchmarks/bench_activations.py --skip-cpu # on a GPU machine: ResNet-50 only
Writes runs/benchmarks/activation_cost.csv (model, activation, ms per step, ratio to ReLU, spread), which
notebook 5 shows.
"""
import argparse
import csv
import importlib
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import sat_data  # noqa: E402
import sat_files  # noqa: E402
import sat_models  # noqa: E402
import sat_smoke  # noqa: E402
from timing import interleaved  # noqa: E402

acts = importlib.import_module("01_activations")
attack = importlib.import_module("02_pgd")
train_mod = importlib.import_module("03_adv_train")
OUT = os.path.join(sat_files.RUNS_DIR, "benchmarks", "activation_cost.csv")
TARGET = 1.05


def activation_costs(dataset, model_name, x, y, eps_px, repeats, inner, device="cpu", amp=None):
    """{activation: (ms per step, ratio to relu, lowest ratio, highest ratio)} for one model and batch."""
    eps = attack.px(eps_px)
    fns = {}
    for act in acts.ACTIVATIONS:
        torch.manual_seed(0)
        cfg = {"dataset": dataset, "model": model_name, "num_classes": 10, "act": act, "image_size": x.shape[-1]}
        model = sat_models.build_model(cfg).to(device, memory_format=torch.channels_last if device != "cpu" else torch.preserve_format)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else None

        def step(model=model, opt=opt, autocast=autocast):
            kw = {"autocast": autocast} if autocast else {}
            train_mod.adversarial_training_step(model, x, y, opt, eps, eps, 1, **kw)
            if device != "cpu":
                torch.cuda.synchronize()
        fns[act] = step
    times = interleaved(fns, repeats, inner)
    out = {}
    for act, ts in times.items():
        rs = [t / r for t, r in zip(ts, times["relu"])]
        out[act] = (1e3 * statistics.median(ts), statistics.median(rs), min(rs), max(rs))
    return out


def report(title, costs, rows):
    print(f"\n{title}")
    print(f"{'activation':<12} {'ms/step':>9} {'x ReLU':>7} {'repeats lo..hi':>15}  target <= {TARGET}")
    for act, (ms, r, lo, hi) in costs.items():
        verdict = "" if act == "relu" else ("met" if r <= TARGET else "NOT met")
        print(f"{act:<12} {ms:9.2f} {r:7.3f} {lo:7.2f}..{hi:<6.2f}  {verdict}")
        rows.append([title, act, f"{ms:.3f}", f"{r:.3f}", f"{lo:.3f}", f"{hi:.3f}"])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--skip-cpu", action="store_true", help="time the GPU model only")
    p.add_argument("--out", default=OUT, help=f"CSV written (default {os.path.relpath(OUT, ROOT)})")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    torch.manual_seed(0)
    if args.skip_cpu and not torch.cuda.is_available():
        raise SystemExit("error: --skip-cpu needs a CUDA GPU (none found)")
    if not args.skip_cpu:
        cpu_costs(args, rows)
    if torch.cuda.is_available():
        xi = torch.rand(128, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
        yi = torch.randint(0, 10, (128,), device="cuda")
        report(f"ResNet-50, 224 px, batch 128, bf16, channels_last, {torch.cuda.get_device_name()}",
               activation_costs("imagenet", "resnet50", xi, yi, 4, repeats=7, inner=5, device="cuda", amp=True), rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "activation", "ms_per_step", "ratio_to_relu", "ratio_lo", "ratio_hi"])
        w.writerows(rows)
    print(f"\nwrote {args.out}")


def cpu_costs(args, rows):
    b = sat_smoke.smoke_settings("benchmark", {"batch": 64})["batch"]   # SAT_SMOKE=1: 8 (figures meaningless)
    x, y = sat_data.digits_tensors("train")
    report("digits model (DigitsNet, 20k parameters), batch 64, eps 64/255, CPU",
           activation_costs("digits", "digitsnet", x[:b], y[:b], 64, repeats=5 if args.quick else 15, inner=10), rows)
    xc, yc = torch.rand(b, 3, 32, 32), torch.randint(0, 10, (b,))
    report("CIFAR ResNet-18, batch 64, eps 8/255, CPU",
           activation_costs("cifar10", "cifar_resnet18", xc, yc, 8, repeats=3 if args.quick else 7, inner=1), rows)


if __name__ == "__main__":
    main()
