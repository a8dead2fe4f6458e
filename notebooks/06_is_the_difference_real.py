# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. Is the difference real? Seeds, test images and a paired bootstrap
#
# **Learning objectives.** After this notebook you can (1) say which two sources of noise sit in a robust-accuracy
# difference between two training recipes, (2) write the paired seed × image bootstrap stage 04 uses and reproduce
# one of its intervals, (3) explain what the number of seeds and the ±3-point "equal" margin do to a verdict, and
# (4) correct a table of many intervals for multiple comparisons.
#
# **Prerequisites.** Notebook 3 (what the comparisons compare); percentiles and sampling with replacement.
# **Time.** About 45 minutes with the exercises (an estimate); the cells ran in 26 to 60 s on a 2-core
# CPU that other jobs kept busy (measured: docs/COURSE.md).
#
# The data are the per-image results of the Fashion-MNIST study with a validation split (RESULTS.md), which
# stage 04 wrote to `results/fashionmnist_val/per_image.json` and which are in git: for each trained model
# (configuration × seed) and each of the test images, a 1 where the model was right and a 0 where it was not,
# clean, under PGD-200 and in the worst case over every attack. Nothing is trained here.

# %%
import os, sys
# The repo root holds 01_activations.py: the parent of notebooks/ (the full edition's folder, its working
# directory) and the grandparent of notebooks/student/ (the student edition's). $SAT_REPO_ROOT overrides it.
here = os.getcwd()
ROOT = os.environ.get("SAT_REPO_ROOT") or next((d for d in (os.path.dirname(here), os.path.dirname(os.path.dirname(here)), here)
                                                if os.path.isfile(os.path.join(d, "01_activations.py"))), None)
assert ROOT, "start this notebook from the repo's notebooks/ or notebooks/student/ folder, or set SAT_REPO_ROOT to the repo root"
sys.path[:0] = [ROOT, os.path.join(ROOT, "notebooks")]
import nbsetup as nb   # paths, quick mode, table/figure helpers: notebooks/nbsetup.py
print(f"quick mode: {nb.QUICK}")

# %% tags=["deterministic"]
import csv
import json
import math
import numpy as np
import matplotlib.pyplot as plt
ev = nb.stage("04_eval")   # bootstrap_diff, verdict, MARGIN: what stage 04 computes
STUDY = os.path.join(ROOT, "results", "fashionmnist_val")
REPS = nb.size(2000, 200)  # bootstrap draws (stage 04: 2,000)

runs = json.load(open(os.path.join(STUDY, "per_image.json")))
finals = {name: r for name, r in runs.items() if r["checkpoint"] == "final"}


def config_name(r):
    f = r["label_fields"]
    return f["act"] + (f" (smooth grad: {f['smooth_grad']})" if f["smooth_grad"] != "none" else "")


def grid(config, metric="worst"):
    """(seeds, images) array of 0/1: which test images each seed's model got right under `metric`."""
    rows = sorted((r["seed"], [c == "1" for c in r[metric]]) for r in finals.values() if config_name(r) == config)
    return np.array([bits for _, bits in rows], dtype=np.float32)


configs = sorted({config_name(r) for r in finals.values()})
for c in configs:
    g = grid(c)
    print(f"{c:<30} {g.shape[0]} seeds x {g.shape[1]} test images, worst case {100 * g.mean():.1f}% "
          f"(seeds from {100 * g.mean(1).min():.1f}% to {100 * g.mean(1).max():.1f}%)")

# %% [markdown]
# ## Two sources of noise
#
# A configuration's robust accuracy is a mean over **seeds** (each seed trains another model: another
# initialisation, another data order) and over **test images** (another test set would give another number). A
# difference between SiLU and ReLU inherits both. Stage 04 resamples both in one bootstrap:
#
# * the **images** are drawn with replacement once per replicate and *shared* by the two sides (the pairing:
#   both models are judged on the same images, so an image both get right or both get wrong cancels out);
# * the **seeds** are drawn with replacement *separately* for each side (their training runs are independent).
#
# The 2.5th and 97.5th percentiles of the replicated differences are the 95% interval. The verdict is *better*
# or *worse* when the interval excludes 0, *equal* when it lies within ±3 points, else *undecided*.

# %% tags=["deterministic"]
relu, silu = grid("relu"), grid("silu")
per_seed = 100 * (silu.mean(1)[:, None] - relu.mean(1)[None, :])
print(f"SiLU minus ReLU, worst case: {100 * (silu.mean() - relu.mean()):+.1f} points on average; "
      f"between single seeds from {per_seed.min():+.1f} to {per_seed.max():+.1f}")
same = ((silu.min(0) == 1) & (relu.min(0) == 1)) | ((silu.max(0) == 0) & (relu.max(0) == 0))
print(f"test images that every SiLU and every ReLU model gets right, or every one gets wrong: {100 * same.mean():.0f}% "
      f"(the pairing cancels them)")

# %% [markdown]
# ## Exercises
#
# 1. **Write the paired bootstrap.** Fill in `my_bootstrap(a, b, reps, rng)` below: `reps` replicates, each drawing
#    the image indices once (shared by a and b) and the seeds of each side separately, all with replacement;
#    return the mean difference and the 2.5th and 97.5th percentiles of the replicated differences, as fractions.
#    The check runs it on a made-up pair of recipes built so that each typical mistake (resampling the seeds only,
#    the images only, or the images separately for the two sides) gives a clearly different interval, compares
#    the interval with a reference bootstrap of 10,000 replicates, and prints PASS or FAIL with a hint (stage 04's
#    `bootstrap_diff` does not count as an answer). The cell then prints your interval for SiLU minus ReLU on the
#    study beside stage 04's and the one in `results/fashionmnist_val/comparisons.csv` (different random numbers:
#    they agree to a few tenths of a point, not exactly).
# 2. **How many seeds?** With 3 seeds per side, how many *distinct* seed resamples does one side have? (Count the
#    multisets of size 3 from 3 items.) Recompute the SiLU − ReLU interval from the first 3 seeds of each side only
#    and compare its width with all seeds'. Which interval would you trust, and why?
# 3. **The margin.** A verdict "equal" needs the whole interval inside ±3 points. For which interval width is
#    "equal" impossible even when the true difference is 0? What does that say about 3-seed studies?
# 4. **Many intervals at once.** The digits study at ε = 32/255 (`results/digits_eps32/`, in RESULTS.md) reports
#    27 intervals at 95%: 9 configurations against ReLU × clean, PGD-200 and worst case. If every true difference
#    were 0, how many would you expect to exclude 0 by chance? Recompute its 27 intervals here at the Bonferroni
#    level (each at 1 − 0.05/k for k comparisons: it keeps the chance that *any* of the k excludes 0 when none
#    should below 5%) and say which verdicts survive.

# %%
def my_bootstrap(a, b, reps, rng):
    """a: (seeds_a, images), b: (seeds_b, images) of 0/1 on the same images. Returns (diff, lo, hi), fractions."""
    # your code here: for each replicate, image indices rng.integers(0, n, n) shared by both sides,
    # seed indices drawn separately for a and b, the difference of the two resampled means
    return None


import checks   # notebooks/checks.py: each exercise's check, PASS or FAIL with a hint


def on_the_study(fn):
    """fn's interval for SiLU minus ReLU (worst case) beside stage 04's and the one comparisons.csv holds."""
    mine = fn(silu, relu, REPS, np.random.default_rng(0))
    if mine is None:
        return
    ref = ev.bootstrap_diff(silu, relu, reps=REPS)
    row = next(r for r in csv.DictReader(open(os.path.join(STUDY, "comparisons.csv")))
               if r["configuration"].startswith("fashionmnist silu") and "[best epoch]" not in r["configuration"])
    print(f"SiLU - ReLU on the study, yours: {100 * mine[0]:+.1f} [{100 * mine[1]:+.1f}, {100 * mine[2]:+.1f}]; stage 04's: "
          f"{100 * ref[0]:+.1f} [{100 * ref[1]:+.1f}, {100 * ref[2]:+.1f}] ({REPS} draws); comparisons.csv: "
          f"{row['worst case Δ (95% CI)']}, {row['worst case verdict']}")


passed = checks.check_bootstrap(my_bootstrap)   # True or False, as printed
on_the_study(my_bootstrap)

# %% [markdown] tags=["solution"]
# ## Solutions
#
# **1.** One replicate = one multinomial draw of the images (shared) and one draw of each side's seeds. Vectorised
# over replicates it is a matrix product, as in `04_eval.bootstrap_diff`; the loop below is the plain version.

# %% tags=["solution"]
def my_bootstrap(a, b, reps, rng):
    n = a.shape[1]
    diffs = np.empty(reps)
    for k in range(reps):
        img = rng.integers(0, n, n)                       # the same images for both sides: the pairing
        sa = rng.integers(0, len(a), len(a))              # seeds of a, with replacement
        sb = rng.integers(0, len(b), len(b))              # seeds of b, independently
        diffs[k] = a[sa][:, img].mean() - b[sb][:, img].mean()
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(a.mean() - b.mean()), float(lo), float(hi)


passed = checks.check_bootstrap(my_bootstrap)   # True or False, as printed
on_the_study(my_bootstrap)

# %% [markdown] tags=["solution"]
# **2.** Multisets of size 3 from 3 seeds: C(3 + 3 − 1, 3) = 10; with 6 seeds there are C(11, 6) = 462. The cell
# prints both intervals and their widths. Fewer seeds pin each side's mean down less well, and the 3-seed interval
# rests on only 10 distinct seed draws per side, so its tails are coarse and its "95%" is not to be trusted as
# 95% (it can even come out narrower by luck): trust the 6-seed interval, and more seeds still when seeds
# disagree.

# %% tags=["solution"]
print(f"distinct seed resamples: 3 seeds {math.comb(5, 3)}, 6 seeds {math.comb(11, 6)}")
for k in (3, len(silu)):
    d, lo, hi = ev.bootstrap_diff(silu[:k], relu[:k], reps=REPS)
    print(f"{k} seeds per side: SiLU - ReLU {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], width {100 * (hi - lo):.1f} points")

# %% [markdown] tags=["solution"]
# **3.** "Equal" needs −3 ≤ lo and hi ≤ +3, so an interval wider than 6 points can never be "equal", whatever the
# truth: it is "undecided" unless it excludes 0. A study whose intervals are that wide (few seeds, seeds that
# disagree, a run that collapsed) can only find large effects; its "undecided" is not evidence of "no effect".
#
# **4.** With k independent 95% intervals and no true difference, 0.05·k exclude 0 by chance: 1.35 of 27. The
# Bonferroni correction builds each interval at 1 − 0.05/k = 99.81%, whose tails hold 0.09% of the replicates
# each: 20,000 replicates put about 19 in each tail (2,000 would put 2, too few to read a percentile from). The
# cell recomputes the study's 27 intervals from `results/digits_eps32/per_image.json` so, vectorised as in
# `04_eval.bootstrap_diff` (each replicate's images as multinomial counts: a matrix product), the images shared by
# all comparisons of a replicate and each side's seeds drawn separately, and lists the verdicts that change.

# %% tags=["solution"]
DIGITS = os.path.join(ROOT, "results", "digits_eps32")
druns = [r for r in json.load(open(os.path.join(DIGITS, "per_image.json"))).values() if r["checkpoint"] == "final"]


def dgrid(config, metric):
    rows = sorted((r["seed"], [c == "1" for c in r[metric]]) for r in druns if config_name(r) == config)
    return np.array([bits for _, bits in rows], dtype=np.float32)


METRICS = {"clean": "clean", "pgd200": "PGD-200", "worst": "worst case"}
dconfigs = sorted({config_name(r) for r in druns} - {"relu"})
k = len(dconfigs) * len(METRICS)
print(f"{len(dconfigs)} configurations x {len(METRICS)} metrics = {k} intervals; with no true difference "
      f"0.05 x {k} = {0.05 * k:.2f} of them would exclude 0 by chance")
grids = {(c, m): dgrid(c, m) for c in dconfigs + ["relu"] for m in METRICS}
n = grids["relu", "worst"].shape[1]
BONF_REPS = nb.size(20_000, 2_000)
rng = np.random.default_rng(0)
diffs = {(c, m): [] for c in dconfigs for m in METRICS}
for start in range(0, BONF_REPS, 5000):
    reps = min(5000, BONF_REPS - start)
    w = rng.multinomial(n, np.full(n, 1 / n), size=reps).T.astype(np.float32) / n   # (images, reps), shared
    cols = np.arange(reps)
    acc = {key: g @ w for key, g in grids.items()}                                  # (seeds, reps) per grid
    for c, m in diffs:
        a, b = acc[c, m], acc["relu", m]
        pick_a, pick_b = rng.integers(0, len(a), a.shape), rng.integers(0, len(b), b.shape)   # seeds, per side
        diffs[c, m].append(a[pick_a, cols].mean(0) - b[pick_b, cols].mean(0))
changed, rows = [], []
for (c, m), parts in diffs.items():
    d = np.concatenate(parts)
    lo95, hi95 = np.percentile(d, [2.5, 97.5])
    lo, hi = np.percentile(d, [100 * 0.025 / k, 100 * (1 - 0.025 / k)])
    v95, vb = ev.verdict(lo95, hi95), ev.verdict(lo, hi)
    rows.append([c, METRICS[m], f"{100 * (grids[c, m].mean() - grids['relu', m].mean()):+.1f}",
                 f"[{100 * lo95:+.1f}, {100 * hi95:+.1f}]", v95, f"[{100 * lo:+.1f}, {100 * hi:+.1f}]", vb])
    if v95 != vb:
        changed.append(f"{c} ({METRICS[m]}): {v95} -> {vb}")
nb.table(["configuration", "metric", "minus ReLU", "95% interval", "verdict", f"{100 * (1 - 0.05 / k):.2f}% interval", "verdict"], rows)
print(f"{len(changed)} of {k} verdicts change under Bonferroni: " + ("; ".join(changed) or "none"))

# %% tags=["solution"]
nb.stamp()   # the answer key's stamp: the code these outputs came from (tests/test_notebooks.py checks it)
