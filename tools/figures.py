"""The figures of RESULTS.md that span studies: a forest plot of every comparison with ReLU, and training curves.

    python tools/figures.py forest                 # docs/forest_comparisons.png from results/*/comparisons.csv
    python tools/figures.py curves NAME=FOLDER ... # docs/training_curves.png from the log.csv files of run folders

forest: each study's worst-case difference against ReLU (95% interval, in points) per configuration, coloured
by its verdict after Holm; the grey band is the ±3-point margin of "equal".
curves: the per-epoch check (PGD-10 and clean accuracy) of the seed-0 runs of ReLU, SiLU and GELU under each
named folder of runs, e.g. `PGD-1=runs/03_adv_train PGD-10=runs/eps64_pgd10` (where catastrophic overfitting
would show as a PGD-10 curve that falls while training goes on).
"""
import csv
import glob
import os
import re
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"better": "tab:green", "worse": "tab:red", "equal": "tab:blue", "undecided": "tab:gray"}


def parse_ci(cell):
    """'+3.8 [+2.5, +5.2]' -> (3.8, 2.5, 5.2)"""
    d, lo, hi = (float(v) for v in re.findall(r"[-+]?\d+\.\d+", cell.replace("−", "-")))
    return d, lo, hi


def forest(out=os.path.join(ROOT, "docs", "forest_comparisons.png")):
    rows = []
    for path in sorted(glob.glob(os.path.join(ROOT, "results", "*", "comparisons.csv"))):
        study = os.path.basename(os.path.dirname(path))
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                v = r.get("worst case after Holm") or r["worst case verdict"]
                rows.append((study, r["configuration"], *parse_ci(r["worst case Δ (95% CI)"]), v))
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.2))
    ax.axvspan(-3, 3, color="0.9", zorder=0, label="±3 points: equal")
    ax.axvline(0, color="k", lw=0.8)
    ys = list(range(len(rows)))[::-1]
    for y, (study, conf, d, lo, hi, v) in zip(ys, rows):
        ax.errorbar(d, y, xerr=[[d - lo], [hi - d]], fmt="o", ms=4, capsize=2, color=COLOURS.get(v, "k"))
    ax.set_yticks(ys, [f"{study}: {conf.split(' ', 1)[1]}" for study, conf, *_ in rows], fontsize=7)
    for v, c in COLOURS.items():
        ax.plot([], [], "o", color=c, label=f"{v} (after Holm)")
    ax.set(xlabel="worst case minus ReLU, points (95% paired bootstrap)",
           title="every comparison with ReLU in results/")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out} ({len(rows)} comparisons)")


def curves(named, out=os.path.join(ROOT, "docs", "training_curves.png")):
    fig, axes = plt.subplots(1, len(named), figsize=(5 * len(named), 4), sharey=True, squeeze=False)
    for ax, (name, folder) in zip(axes[0], named):
        for i, act in enumerate(("relu", "silu", "gelu")):
            # the run's folder: digits_<act>_s0, or with the settings that differ from the preset named
            # (digits_<act>_eps32_pgd10_s0; folders trained before 2026-12-06 carry the short name)
            logs = sorted(glob.glob(os.path.join(folder, f"digits_{act}_s0", "log.csv")) +
                          [p for p in glob.glob(os.path.join(folder, f"digits_{act}_*_s0", "log.csv")) if "_sg-" not in p])
            if not logs:
                continue
            log = logs[0]
            with open(log, newline="") as f:
                rows = list(csv.DictReader(f))
            ep = [int(r["epoch"]) for r in rows]
            ax.plot(ep, [100 * float(r["check_pgd10_acc"]) for r in rows], "-", color=f"C{i}", label=f"{act} PGD-10")
            ax.plot(ep, [100 * float(r["check_clean_acc"]) for r in rows], ":", color=f"C{i}", label=f"{act} clean")
        ax.set(title=f"{name} training, seed 0", xlabel="epoch", ylim=(0, 102))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("per-epoch check accuracy % (first 256 test images)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["forest"]:
        forest()
    elif sys.argv[1:2] == ["curves"] and len(sys.argv) > 2:
        curves([a.split("=", 1) for a in sys.argv[2:]])
    else:
        sys.exit("usage: python tools/figures.py forest | curves NAME=FOLDER ...")
