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
# **Time.** About 45 minutes with the exercises; the cells run in under a minute on 2 CPU cores.
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

# %%
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

# %%
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
#    return the mean difference and the 2.5th and 97.5th percentiles of the replicated differences. The check
#    cell compares your interval for SiLU minus ReLU with stage 04's `bootstrap_diff` and with the interval in
#    `results/fashionmnist_val/comparisons.csv` (the two bootstraps draw different random numbers, so they agree
#    to a few tenths of a point, not exactly).
# 2. **How many seeds?** With 3 seeds per side, how many *distinct* seed resamples does one side have? (Count the
#    multisets of size 3 from 3 items.) Recompute the SiLU − ReLU interval from the first 3 seeds of each side only
#    and compare its width with all seeds'. Which interval would you trust, and why?
# 3. **The margin.** A verdict "equal" needs the whole interval inside ±3 points. For which interval width is
#    "equal" impossible even when the true difference is 0? What does that say about 3-seed studies?
# 4. **Many intervals at once.** Each digits study in RESULTS.md reports 27 intervals at 95% (9 configurations ×
#    clean, PGD-200, worst case). If every true difference were 0, how many would you expect to exclude 0 by chance? Recompute the study's intervals here at
#    the Bonferroni level (each at 1 − 0.05/k for k comparisons) and say which verdicts survive.

# %%
def my_bootstrap(a, b, reps, rng):
    """a: (seeds_a, images), b: (seeds_b, images) of 0/1 on the same images. Returns (diff, lo, hi), fractions."""
    # your code here: for each replicate, image indices rng.integers(0, n, n) shared by both sides,
    # seed indices drawn separately for a and b, the difference of the two resampled means
    return None


def check_bootstrap(fn):
    mine = fn(silu, relu, REPS, np.random.default_rng(0))
    if mine is None:
        print("my_bootstrap returns None: write it in the cell above, then run this cell again")
        return
    ref = ev.bootstrap_diff(silu, relu, reps=REPS)
    row = next(r for r in csv.DictReader(open(os.path.join(STUDY, "comparisons.csv")))
               if r["configuration"].startswith("fashionmnist silu") and "[best epoch]" not in r["configuration"])
    print(f"yours:    {100 * mine[0]:+.1f} [{100 * mine[1]:+.1f}, {100 * mine[2]:+.1f}]")
    print(f"stage 04: {100 * ref[0]:+.1f} [{100 * ref[1]:+.1f}, {100 * ref[2]:+.1f}]  (bootstrap_diff, {REPS} draws)")
    print(f"comparisons.csv: {row['worst case Δ (95% CI)']}  verdict: {row['worst case verdict']}")


check_bootstrap(my_bootstrap)

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


check_bootstrap(my_bootstrap)

# %% [markdown] tags=["solution"]
# **2.** Multisets of size 3 from 3 seeds: C(3 + 3 − 1, 3) = 10; with 6 seeds there are C(11, 6) = 462. The cell
# prints both intervals: here the 3-seed one is wider (4.2 points against 3.6), as fewer seeds pin each side's
# mean down less well, yet it rests on 10 distinct seed draws per side, so its tails are coarse and its "95%" is
# not to be trusted as 95%: trust the 6-seed interval, and more seeds still when seeds disagree.

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
# Bonferroni correction builds each interval at 1 − 0.05/k; the cell recomputes this study's comparisons so.

# %% tags=["solution"]
others = [c for c in configs if c != "relu"]
k = len(others)
rng = np.random.default_rng(0)
print(f"{k} comparisons with ReLU; Bonferroni: each interval at {100 * (1 - 0.05 / k):.2f}%")
for c in others:
    a = grid(c)
    d, lo95, hi95 = ev.bootstrap_diff(a, relu, reps=REPS)
    reps = []   # the replicates themselves, to read other percentiles
    for _ in range(REPS):
        img = rng.integers(0, a.shape[1], a.shape[1])
        reps.append(a[rng.integers(0, len(a), len(a))][:, img].mean() - relu[rng.integers(0, len(relu), len(relu))][:, img].mean())
    lo, hi = np.percentile(reps, [100 * 0.025 / k, 100 * (1 - 0.025 / k)])
    print(f"{c:<28} 95%: [{100 * lo95:+.1f}, {100 * hi95:+.1f}] {ev.verdict(lo95, hi95):<9}  "
          f"Bonferroni: [{100 * lo:+.1f}, {100 * hi:+.1f}] {ev.verdict(lo, hi)}")
