"""Stage 04: clean and robust accuracy of every checkpoint, checked for gradient masking; the paper's tables.
Measured (RESULTS.md, digits, 15 seeds, `python 03_adv_train.py --seeds 15` then this): worst case 35.2% for ReLU,
+5.0 points [+2.6, +7.5] with a smooth gradient for the attacker (Table 1), -4.6 [-7.0, -2.2] for SiLU (Figure 3).

Paper: arXiv:2006.14536, evaluation protocol (PGD-200, eps = 4/255, step 1/255, random start), Table 1 and
Figure 3. Evaluation hygiene after Carlini et al. 2019 (docs/PAPER.md): an independent strong attack
(APGD, Croce & Hein 2020) and a gradient-free one (Square, Andriushchenko et al. 2020) from `torchattacks`
beside our PGD, an adaptive attack for ReLU models, and on request the reference AutoAttack (`pyautoattack`);
the headline robust accuracy is the per-example worst case over all of them.

Per checkpoint (its own dataset and eps; step eps/4):
  clean, FGSM, PGD-k for k in 1, 10, 50, 200 (stage 02's early-stopping pgd_eval), APGD-CE, APGD-DLR,
  Square (margin loss), the reference APGD-T (pyautoattack: targeted DLR, 9 target classes), optionally the reference AutoAttack's standard set (--autoattack: APGD-CE, APGD-T,
  FAB-T, Square 5,000); PGD-20 at 0.5/1/2/4/8 x eps (a point beyond 255/255 attacks in the whole pixel box).
  Adaptive attack, for every model whose forward holds ReLUs (plain ReLU and Table 1's smooth-backward rows):
  PGD-200 through the smooth backward (BPDA-style: sigmoid(alpha x) in place of ReLU's step, the attacker that
  knows the paper's trick). Worst case = robust only if robust to every attack run.
Randomness, so that neither the process count nor --batch-size changes a number: each image's PGD start is
drawn from a generator seeded by (seed, its index in the evaluated list); APGD, Square and AutoAttack draw per
batch, so they attack fixed blocks of --block images by index (100 by default), block b seeded by (seed, b).
Precision: the attacks run in float32 with TF32 off on CUDA (attacks_at_full_precision; cuDNN's default TF32
convolutions keep a 10-bit mantissa, and a low-precision gradient can weaken an attack).
Masking checks (each failure is printed as a flag beside the model, with its numbers):
  steps       robust accuracy must not rise with more PGD steps (1 -> 10 -> 50 -> 200, one shared random
              start; step max(eps/4, eps/k), so 10, 50 and 200 share step eps/4), 1-point tolerance
  eps         at 8 x eps robust accuracy must fall to about chance (<= chance + 10 points)
  single-step FGSM must not be stronger than PGD-200 (1-point tolerance)
  independent APGD / APGD-T / Square / AutoAttack must not beat PGD-200 by more than 3 points
Comparisons: each configuration (every training setting but the seed: model, width, eps, attack, batch, ...)
minus the plain ReLU run of the same recipe (same data set, eps and test images) for clean, PGD-200 and
worst-case accuracy, with a 95% bootstrap interval over seeds and test images; verdict "better" / "worse" when
the interval excludes 0, "equal" when it lies within +-3 points, else "undecided". Two configurations of one
activation (two models, two batch sizes) are two rows, named by the settings in which they differ.

Run it:
    python 04_eval.py                        # every final.pt under runs/02_pgd and runs/03_adv_train
                                             # CPU: 143 s for the 11 default checkpoints on 2 idle
                                             # cores (74-76 s before PGD-sg and APGD-T joined)
    python 04_eval.py --limit 1000           # ImageNet/CIFAR checkpoints: quick look on 1000 images
    torchrun --nproc_per_node 8 04_eval.py --subset robustbench    # each checkpoint's images over 8 GPUs (NCCL)
On the CPU `--jobs N` checkpoints are evaluated at once (default: one per core), one process and one torch
thread each; under torchrun the N processes share each checkpoint's images instead. Same numbers either way.
A killed run, started again with the same command, continues from the blocks it saved.
Writes (runs/04_eval/; the code that writes them, and the cache, is in sat_report.py; sharding, resume and the
progress bars in sat_shards.py):
    results.csv, results.md          one row per configuration, mean +- std over seeds, paper columns beside
    per_run.csv                      every number for every checkpoint, with its attack parameters
    per_image.json                   per checkpoint and test image: right or not, clean, PGD-200, worst case
                                     (--results DIR copies these small files, the tables too, to DIR)
    comparisons.csv, comparisons.md  each configuration minus plain ReLU, with its interval and verdict
    cache/<run>.json                 per-checkpoint results, per image (re-used while the checkpoint's contents,
                                     data, images, eps and attack settings are unchanged)
    figure3_acc_vs_robust.png        the paper's Figure 3: ours (left) beside the paper's ImageNet points (right)
    robust_vs_steps.png, robust_vs_eps.png
"""
import copy
import importlib
import json
import math
import os
import time

import torch

import sat_models
import sat_plumbing
import sat_report
import sat_shards
import sat_stats
from sat_report import PAPER_FIGURE3, PAPER_TABLE1, aggregate, fmt, paper_numbers  # noqa: F401 (notebooks: ev.aggregate, ...)

acts = importlib.import_module("01_activations")
attack = importlib.import_module("02_pgd")

OUT_DIR = os.path.join(sat_plumbing.RUNS_DIR, "04_eval")
PGD_STEPS = [1, 10, 50, 200]            # the steps check; 200 is the paper's evaluation attacker
EPS_FACTORS = [0.5, 1, 2, 4, 8]         # the eps check, PGD-20 at these multiples of the checkpoint's eps
APGD_STEPS = 100                        # torchattacks APGD iterations (AutoAttack's default is 100)
SQUARE_QUERIES = 1000                   # Square attack queries (AutoAttack uses 5000; --square-queries)
BLOCK = 100                             # images per block, the unit of the attacks' randomness (--block)
TOL_STEPS, TOL_FGSM, TOL_INDEP, TOL_CHANCE = 0.01, 0.01, 0.03, 0.10   # masking-check tolerances
COMPARED = {"clean": "clean", "pgd200": "PGD-200", "worst": "worst case"}   # the metrics compared with ReLU
MARGIN = 0.03             # "equal": the whole 95% interval of a difference lies within +-3 points
BOOTSTRAP = 20000         # bootstrap replicates per comparison (Monte Carlo error of an interval end: ~0.05 points)


# ---- Attacks: every attack on one model, a robust/broken mask per test image ---------------------------------

def correct(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


def pgd_step(eps, steps):
    """Step of PGD-k here: max(eps/4, eps/k) for k < 200; eps/4 for PGD-200, the paper's 1/255 at eps 4/255."""
    return attack.default_step(eps, steps) if steps < 200 else eps / 4


def pgd_robust(model, x, y, eps, steps, u, max_steps=None):
    """Robust mask under PGD-k (stage 02's early-stopping pgd_eval, step pgd_step), starting at eps * u: u holds
    each image's own random direction (random_starts). max_steps: stop every PGD there (the command tests'
    SAT_SMOKE=1, see sat_plumbing.smoke_settings)."""
    return attack.pgd_eval(model, x, y, eps, pgd_step(eps, steps), min(steps, max_steps or steps), delta0=eps * u) == -1


def random_starts(x, first, seed):
    """u (B, ...) uniform in [-1, 1], image i's drawn from a generator seeded by (seed, first + i), its index in
    the evaluated list: an image gets the same PGD start whatever batch, block or process it falls in. Every PGD
    of one image starts at eps * u (PGD-1/10/50/200 share it, so their curve isolates the effect of more steps)."""
    g, u = torch.Generator(), torch.empty(x.shape)
    for i in range(len(x)):
        g.manual_seed(seed * 2 ** 32 + first + i)
        u[i].uniform_(-1, 1, generator=g)
    return u.to(x.device)


def block_seed(seed, b):
    """The seed of block b's APGD, Square and AutoAttack, whose random draws are per batch: they attack one fixed
    block of images at a time (sat_shards), so neither --batch-size nor the process count changes a result."""
    return (seed * 1_000_003 + b) % 2 ** 31


def has_relu(model):
    return any(isinstance(m, (torch.nn.ReLU, acts.SmoothGradReLU)) for m in model.modules())


def smooth_backward_copy(model):
    """An adaptive attacker for ReLU models (BPDA-style, Athalye et al. 2018): a copy of the model whose ReLUs
    backpropagate SAT's smooth gradient, sigmoid(alpha x) in place of ReLU's step (01's SmoothGradReLU, always
    smooth). Its forward is the model's, bit for bit, so PGD on the copy attacks the model itself with a gradient
    that knows Table 1's trick (notebook 2: 3.7-5.2 points more than plain PGD on a ReLU model)."""
    m = copy.deepcopy(model)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.ReLU:
                setattr(parent, name, acts.SmoothGradReLU())
    for mod in m.modules():
        if isinstance(mod, acts.SmoothGradReLU):
            mod.smooth = True
    return m.eval()


def reference_autoattack(model, eps, num_classes, seed, device):
    """The reference AutoAttack (Croce & Hein 2020; PyPI pyautoattack, the packaged fra31/auto-attack), standard
    version: APGD-CE, APGD-T, FAB-T, Square 5,000 queries. Returns a function (x, y) -> adversarial x."""
    from pyautoattack import AutoAttack
    aa = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=seed, device=device)
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, num_classes - 1)
    aa.verbose = False
    return lambda x, y: aa.run_standard_evaluation(x, y, batch_size=len(y))[0]


def reference_apgd_t(model, eps, num_classes, steps, seed, device):
    """The reference APGD-T (pyautoattack: APGD on the targeted DLR loss, one run per target class, the 9 most
    likely wrong classes; AutoAttack's second attack). On the digits checkpoints it is what the reference AutoAttack
    finds beyond torchattacks' APGD and Square (benchmarks/autoattack_check.py): 2-3 points."""
    from pyautoattack.autopgd_base import APGDAttack_targeted
    atk = APGDAttack_targeted(model, n_restarts=1, n_iter=steps, eps=eps, norm="Linf", seed=seed, device=device)
    atk.n_target_classes = min(9, num_classes - 1)
    return atk.perturb


def independent_attacks(model, eps, num_classes, s, seed, device):
    """name -> attack (x, y) -> adversarial x: torchattacks' APGD-CE/DLR and Square, the reference APGD-T, and
    with --autoattack the whole reference AutoAttack."""
    import torchattacks
    atk = {f"apgd_{loss}": torchattacks.APGD(model, norm="Linf", eps=eps, steps=s["apgd_steps"], n_restarts=1, loss=loss, seed=seed)
           for loss in ("ce", "dlr")}
    if num_classes < 3:   # DLR divides by the gap between the 1st and 3rd largest logits
        del atk["apgd_dlr"]
    atk["square"] = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=s["square_queries"], n_restarts=1, seed=seed)
    if num_classes >= 4:   # the targeted DLR loss divides by the gap between the 1st and 4th largest logits
        atk["apgd_t"] = reference_apgd_t(model, eps, num_classes, s["apgd_steps"], seed, device)
    if s["autoattack"]:
        atk["autoattack"] = reference_autoattack(model, eps, num_classes, seed, device)
    return atk


def attack_params(eps, num_classes, s, adaptive):
    """Every attack's parameters, written next to every number (per_run.csv)."""
    e = f"eps={eps * 255:.4g}/255"
    params = {"fgsm": f"{e} step=eps, no random start"}
    for k in PGD_STEPS:
        params[f"pgd{k}"] = f"{e} step={pgd_step(eps, k) * 255:.4g}/255 steps={k} random start, any-iterate"
    params["pgd200_sg"] = (f"{e} step={pgd_step(eps, 200) * 255:.4g}/255 steps=200 through the smooth backward "
                           f"(sigmoid({acts.PSOFTPLUS_ALPHA:g}x) for ReLU's step, BPDA-style)" if adaptive
                           else "not run: no ReLU in the forward")
    params.update({f"apgd_{loss}": f"torchattacks.APGD {e} steps={s['apgd_steps']} restarts=1 loss={loss}" for loss in ("ce", "dlr")})
    if num_classes < 3:
        params["apgd_dlr"] = "not run: the DLR loss needs at least 3 classes"
    params["square"] = f"torchattacks.Square {e} queries={s['square_queries']} loss=margin"
    params["apgd_t"] = (f"pyautoattack APGD-T {e} steps={s['apgd_steps']} restarts=1 targets={min(9, num_classes - 1)} loss=targeted DLR"
                        if num_classes >= 4 else "not run: the targeted DLR loss needs at least 4 classes")
    if s["autoattack"]:
        params["autoattack"] = f"pyautoattack.AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square 5000) {e}"
    for f in EPS_FACTORS:
        whole = " = the whole pixel box [0, 1]" if eps * f >= 1 else ""
        params[f"eps_x{f:g}"] = f"PGD-20 at {f:g} x eps = {eps * f * 255:.4g}/255{whole}"
    return params


def block_masks(model, x, y, first, b, eps, num_classes, s, smooth_model=None):
    """Per-image robust masks of block b (its first image is number `first` of the evaluated list) under every
    attack. smooth_model: the adaptive attacker's copy (smooth_backward_copy), or None for a model without ReLU."""
    u = random_starts(x, first, s["seed"])
    mx = s["max_pgd_steps"]
    masks = {"clean": correct(model, x, y),
             "fgsm": correct(model, attack.pgd(model, x, y, eps, eps, 1, rand_start_prob=0.0), y)}
    for k in PGD_STEPS:
        masks[f"pgd{k}"] = pgd_robust(model, x, y, eps, k, u, mx)
    if smooth_model is not None:
        masks["pgd200_sg"] = pgd_robust(smooth_model, x, y, eps, 200, u, mx)
    for name, atk in independent_attacks(model, eps, num_classes, s, block_seed(s["seed"], b), x.device).items():
        masks[name] = correct(model, atk(x, y), y)
    for f in EPS_FACTORS:   # robust accuracy against eps (PGD-20): the eps check and the figure
        e = min(eps * f, 1.0)   # beyond 1 the ball holds the whole pixel box: every point keeps its own key
        masks[f"eps_x{f:g}"] = pgd_robust(model, x, y, e, 20, u, mx)
    return masks


def summarize(masks, params, eps, num_classes):
    """Accuracies (fractions) from the per-image masks of every image, the worst case, the masking flags."""
    attacks_run = [k for k in masks if k not in ("clean",) and not k.startswith("eps_x")]
    masks["worst"] = masks["clean"].clone()
    for k in attacks_run:
        masks["worst"] &= masks[k]
    params["worst"] = "per-example worst case over " + ", ".join(attacks_run)
    res = {"apgd_dlr": float("nan"), "apgd_t": float("nan"), "pgd200_sg": float("nan")}   # NaN where not run
    res.update({k: v.float().mean().item() for k, v in masks.items() if not k.startswith("eps_x")})
    # keyed by the unclipped eps * factor: at digits' 64/255 the x4 and x8 points are both the whole pixel box
    res["eps_curve"] = {f"{eps * f * 255:.4g}": masks[f"eps_x{f:g}"].float().mean().item() for f in EPS_FACTORS}
    res["params"] = params
    res["n"] = len(masks["clean"])
    res["flags"] = masking_flags(res, num_classes)
    # which test images each model got right, '0'/'1' per image: the paired bootstrap of the comparisons
    res["per_image"] = {k: sat_shards.bits(v) for k, v in masks.items()}
    return res


def attack_settings(autoattack=False, square_queries=SQUARE_QUERIES, apgd_steps=APGD_STEPS, seed=0, max_pgd_steps=None,
                    block=BLOCK):
    """Every setting that changes a result (and so goes in the cache key)."""
    return {"autoattack": autoattack, "square_queries": square_queries, "apgd_steps": apgd_steps, "seed": seed,
            "max_pgd_steps": max_pgd_steps, "block": block, "protocol": 4}


def evaluate_model(model, x, y, eps, num_classes, batch_size=None, device=None, adaptive=None, **kw):
    """Every attack on one model, on tensors x (N, C, H, W) in [0, 1] and y (N,), in this process, block by
    block (the same numbers as stage 04's command, sharded or not). eps in [0, 1] units. adaptive: run the
    smooth-backward PGD (default: when the model holds a ReLU). batch_size: ignored (blocks fix the batches).
    Returns accuracies (fractions), the attack parameters beside them, and the masking flags."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (in [0, 1] units), got {eps}")
    attack.check_pixels(x)   # a user's tensors enter here: normalised inputs are refused, once
    s = attack_settings(**kw)
    model.eval()
    adaptive = has_relu(model) if adaptive is None else adaptive
    smooth = smooth_backward_copy(model) if adaptive else None
    masks = {}
    for b, first in enumerate(range(0, len(y), s["block"])):
        xb, yb = x[first:first + s["block"]], y[first:first + s["block"]]
        for k, m in block_masks(model, xb, yb, first, b, eps, num_classes, s, smooth).items():
            masks.setdefault(k, []).append(m.cpu())
    masks = {k: torch.cat(v) for k, v in masks.items()}
    return summarize(masks, attack_params(eps, num_classes, s, adaptive), eps, num_classes)


# ---- Masking checks (Carlini et al. 2019): numbers that cannot be reported as they are -----------------------

def masking_flags(r, num_classes):
    """The Carlini et al. sanity checks, each failure a short string with its numbers."""
    n = r["n"]

    def count(acc):   # images, not rounded percentages: 15 of 500 images is exactly 3 points, not a failure
        return round(acc * n)

    flags = []
    pgd = [r[f"pgd{k}"] for k in PGD_STEPS]
    for (k1, a1), (k2, a2) in zip(zip(PGD_STEPS, pgd), zip(PGD_STEPS[1:], pgd[1:])):
        if count(a2) - count(a1) > TOL_STEPS * n:
            flags.append(f"steps: PGD-{k2} {100 * a2:.1f}% > PGD-{k1} {100 * a1:.1f}%")
    chance = 1.0 / num_classes
    last_eps, last_acc = list(r["eps_curve"].items())[-1]
    if count(last_acc) > (chance + TOL_CHANCE) * n:
        flags.append(f"eps: {100 * last_acc:.1f}% at eps {last_eps}/255, chance is {100 * chance:.0f}%")
    if count(r["pgd200"]) - count(r["fgsm"]) > TOL_FGSM * n:
        flags.append(f"single-step: FGSM {100 * r['fgsm']:.1f}% < PGD-200 {100 * r['pgd200']:.1f}%")
    for k in ("apgd_ce", "apgd_dlr", "apgd_t", "square", "autoattack"):
        if k in r and r[k] == r[k] and count(r["pgd200"]) - count(r[k]) > TOL_INDEP * n:
            flags.append(f"independent: {k} {100 * r[k]:.1f}% < PGD-200 {100 * r['pgd200']:.1f}%")
    return flags

# ---- Comparison with ReLU: a difference, its 95% interval, a verdict -----------------------------------------

def bootstrap_diff(a, b, reps=BOOTSTRAP, seed=0, paired=False):
    """Difference of accuracies a - b with a 95% bootstrap interval. a: (seeds of the configuration, images)
    and b: (seeds of the reference, images), 0/1 per test image, the SAME images in the same order.
    Returns (difference, low, high) as fractions; bootstrap_replicates gives the replicates themselves."""
    d, diffs = bootstrap_replicates(a, b, reps, seed, paired)
    return (d, *sat_stats.interval(diffs))


def bootstrap_replicates(a, b, reps=BOOTSTRAP, seed=0, paired=False):
    """Two sources of noise, both resampled: the test images (one draw of n images with replacement per
    replicate, shared by a and b: the pairing, which cancels the images both get right or both get wrong)
    and the seeds. paired=False: seeds drawn separately for a and b (independent training runs). paired=True:
    row i of a and row i of b share training seed i, hence the same initial weights, data order and random
    starts (tests/test_train.py checks it for every activation), so one draw of seed indices serves both.
    Returns (difference, the reps replicates of it) as fractions."""
    import numpy as np
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    n, diffs = a.shape[1], []
    for chunk in range(0, reps, 250):                       # 250 replicates at a time bound the memory
        k = min(250, reps - chunk)
        w = rng.multinomial(n, np.full(n, 1 / n), size=k).T.astype(np.float32) / n   # (n, k) image weights
        acc_a, acc_b = a @ w, b @ w                          # (seeds, k): each seed's accuracy per replicate
        pick_a = rng.integers(0, len(a), (len(a), k))        # resampled seeds, per replicate
        pick_b = pick_a if paired else rng.integers(0, len(b), (len(b), k))
        cols = np.arange(k)
        diffs.append(acc_a[pick_a, cols].mean(0) - acc_b[pick_b, cols].mean(0))
    return float(a.mean() - b.mean()), np.concatenate(diffs)


def verdict(lo, hi, margin=MARGIN, guard=0.0):
    """better / worse: the interval excludes 0; equal: it lies within +-margin; else undecided. guard: how far
    clear of each threshold an end must be (two Monte Carlo errors: a verdict must not hang on the bootstrap's seed)."""
    return ("better" if lo > guard else "worse" if hi < -guard
            else "equal" if -margin + guard <= lo and hi <= margin - guard else "undecided")


def compare_with_relu(results, seed=0):
    """Every configuration against plain ReLU (same data set, eps and test images, adversarial training): the
    activations of Figure 3 and the smooth-backward rows of Table 1. One row per configuration; per metric:
    (difference, low, high, verdict, Monte Carlo error, its p-value, the verdict after Holm over the study's rows).
    seed: the bootstrap's own (a verdict must not depend on it: tests/test_statistics.py)."""
    import numpy as np

    def grid(runs, k):   # (seeds, images): which test images each run got right, by metric k, in seed order
        return np.array([[c == "1" for c in r["per_image"][k]] for r in sorted(runs, key=lambda r: r["seed"])])

    def reference(r):   # the ReLU run of the same recipe: the same settings but act=relu, smooth_grad=none
        return json.dumps({**r["recipe"], "act": "relu", "smooth_grad": "none"}, sort_keys=True) if "recipe" in r else r["dataset"]

    labels, groups = sat_report.config_labels(results), {}
    for r in results:
        if r["train_attack"] != "none" and "per_image" in r:
            key = (r["dataset"], r["eps_px"], r["n"], reference(r))
            groups.setdefault(key, {}).setdefault(labels[sat_report.recipe_key(r)], []).append(r)
    rows = []
    for (dataset, eps_px, n, _), by_label in groups.items():
        relu = [lb for lb, rs in by_label.items() if rs[0]["act"] == "relu" and rs[0]["smooth_grad"] == "none"]
        if not relu:
            continue
        ref, family = by_label[relu[0]], []
        for label, rs in by_label.items():
            if label == relu[0]:
                continue
            # paired when both sides ran the same seeds: seed i of each got the same initial weights and data order
            paired = sorted(r["seed"] for r in rs) == sorted(r["seed"] for r in ref) and len(rs) > 1
            row = {"configuration": label, "vs": relu[0], "eps": f"{eps_px:g}/255", "n_test": n,
                   "seeds": f"{len(rs)} vs {len(ref)}" + (", paired" if paired else "")}
            for k in COMPARED:
                d, reps = bootstrap_replicates(grid(rs, k), grid(ref, k), seed=seed, paired=paired)
                lo, hi = sat_stats.interval(reps)
                mc = sat_stats.mc_error(reps)
                if len(rs) > 1 and len(ref) > 1:
                    v = verdict(lo, hi, guard=2 * mc)
                    p = sat_stats.claimed_p(v, *sat_stats.p_values(reps, MARGIN))
                else:
                    v, p = "one seed: no verdict", float("nan")
                row[k] = (d, lo, hi, v, mc, p)
            paper, paper_relu = paper_numbers(rs[0]["act"], rs[0]["smooth_grad"]), PAPER_TABLE1["none"]
            row["paper"] = f"{paper[1] - paper_relu[1]:+.1f} (ImageNet PGD-200)" if paper else ""
            family.append(row)
        for k in COMPARED:   # Holm over this study's comparisons on metric k: which verdicts hold all at once
            claims = [i for i, row in enumerate(family) if row[k][5] == row[k][5]]
            for i, p_adj in zip(claims, sat_stats.holm([family[i][k][5] for i in claims])):
                v = family[i][k][3]
                family[i][k] += (v if p_adj < 0.05 and v != "undecided" else "undecided",)
            for i, row in enumerate(family):
                if i not in claims:
                    row[k] += ("—",)
        rows += family
    return rows


def comparison_table(rows):
    """compare_with_relu's rows as (headers, rows of strings): differences and intervals in points."""
    heads = ["configuration", "vs", "seeds", "test images"] + [f"{h} Δ (95% CI)" for h in COMPARED.values()] + \
            [f"{h} verdict" for h in COMPARED.values()] + [f"{h} after Holm" for h in COMPARED.values()] + \
            ["Monte Carlo error", "paper Δ"]
    cells = [[row["configuration"], row["vs"], row["seeds"], str(row["n_test"])] +
             [f"{100 * row[k][0]:+.1f} [{100 * row[k][1]:+.1f}, {100 * row[k][2]:+.1f}]" for k in COMPARED] +
             [row[k][3] for k in COMPARED] + [row[k][6] for k in COMPARED] +
             [f"±{100 * max(row[k][4] for k in COMPARED):.2f}"] + [row["paper"] or "—"] for row in rows]
    return heads, cells


# ---- Every checkpoint under runs/ (finding them, their test images, the cache: sat_report.py) ----------------

def attacks_at_full_precision():
    """The attacks run in float32 with TF32 off: on Ampere and later GPUs cuDNN runs float32 convolutions in TF32
    (10-bit mantissa) by default, and a low-precision gradient can weaken an attack. Called by main() before any
    model is loaded; on the CPU the flags change nothing."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def evaluate_checkpoint(path, args, device, position=0):
    """Every attack on one checkpoint: its own model, data set and eps (or --eps), its test images (--subset,
    --limit), block by block, this process's share of the blocks under torchrun (sat_shards). A killed run
    resumes from the blocks saved. Returns (result, cached) on rank 0, (None, cached) on the other ranks.
    The result carries the run's configuration, which the tables group by."""
    model, ckpt = sat_models.model_from_checkpoint(path, device)
    cfg = ckpt["config"]
    eps_px = args.eps if args.eps is not None else cfg["eps"]
    s = attack_settings(args.autoattack, args.square_queries, args.apgd_steps, 0, args.max_pgd_steps, args.block)
    subset = args.subset if cfg["dataset"] == "imagenet" else "all"   # RobustBench's list names ImageNet images
    key = sat_report.cache_key(path, args, cfg, s, subset)
    cache = sat_report.cache_file(path, args)
    saved = sat_shards.broadcast(None if args.no_cache else sat_report.cached_result(cache, key) or sat_report.result_of_same_final(path, ckpt, args, s, subset))
    if saved is not None:
        return saved, True
    images = sat_report.test_images(cfg, args.data, args.limit, subset)
    eps, adaptive = attack.px(eps_px), has_relu(model)
    smooth = smooth_backward_copy(model) if adaptive else None
    run = sat_shards.Blocks(len(images), args.block, cache[:-len(".json")] + f".parts-{sat_shards.key_hash(key)}",
                            desc=os.path.basename(os.path.dirname(path)), position=position)
    for b, first, x, y in run.todo(images, sat_report.loader_workers(images)):
        run.save(b, block_masks(model, x.to(device), y.to(device), first, b, eps, cfg["num_classes"], s, smooth))
    masks = run.gather()   # every image's masks on rank 0
    if masks is None:
        return None, False
    res = summarize(masks, attack_params(eps, cfg["num_classes"], s, adaptive), eps, cfg["num_classes"])
    res.update(run=os.path.basename(os.path.dirname(path)) + ("@best" if ckpt.get("selected") == "best" else ""), path=path, dataset=cfg["dataset"], model=cfg["model"],
               act=cfg["act"], smooth_grad=cfg["smooth_grad"], train_attack=cfg["attack"], seed=cfg["seed"],
               eps_px=eps_px, epochs=ckpt.get("epoch"), subset=subset, checkpoint=ckpt.get("selected", "final"),
               recipe={**sat_report.recipe(cfg), **({"checkpoint": "best"} if ckpt.get("selected") == "best" else {})})
    sat_shards.write_json(cache, {"key": key, "result": res})
    run.remove_parts()
    return res, False


def evaluate_job(job):
    """One (path, args, device, bar position) in this process or a --jobs worker: (result, cached, seconds)."""
    path, args, device, position = job
    t = time.time()
    r, cached = evaluate_checkpoint(path, args, torch.device(device), position)
    return r, cached, time.time() - t


# ---- main ----------------------------------------------------------------------------------------------------

def main(argv=None):
    p = sat_plumbing.ArgumentParser(description="Evaluate every checkpoint under --runs (see the module docstring).")
    p.add_argument("--runs", default=sat_plumbing.RUNS_DIR, help="folder searched for final.pt files (default runs: its 02_pgd/ and 03_adv_train/)")
    p.add_argument("--out", default=OUT_DIR, help="output folder (default runs/04_eval; runs/04_eval_best with --checkpoint best)")
    p.add_argument("--results", default=None, help="also copy the tables and the per-run and per-image results (small "
                   "CSV / JSON files) to this folder, e.g. results/<study> (kept in git)")
    p.add_argument("--checkpoint", nargs="+", default=["final"], choices=["final", "best"],
                   help="final: each run's last epoch (final.pt); best: its early-stopped epoch (best.pt, the best "
                   "validation PGD-10; runs with a validation split only); both: rows of each kind in one table")
    p.add_argument("--data", default=None, help="cifar10/fashionmnist/imagenet data folder (default: the one in the checkpoint's config)")
    p.add_argument("--subset", default="all", choices=["all", "robustbench"],
                   help="all test images, or for ImageNet checkpoints RobustBench's 5,000 validation images "
                   "(resources/README.md; the other checkpoints keep their whole test split)")
    p.add_argument("--eps", type=float, default=None, help="evaluate at this eps, pixel units (default: each checkpoint's own)")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N test images only (0 = all)")
    p.add_argument("--block", type=int, default=BLOCK, help="images per block: the attack batch and the unit of the "
                   "attacks' randomness (a change re-draws APGD's and Square's; larger blocks use a GPU better)")
    p.add_argument("--batch-size", type=int, default=None, help="kept for old commands: the attack batch is --block")
    p.add_argument("--apgd-steps", type=int, default=APGD_STEPS, help="APGD iterations")
    p.add_argument("--square-queries", type=int, default=SQUARE_QUERIES, help="Square attack queries")
    p.add_argument("--autoattack", action="store_true", help="also run the reference AutoAttack's standard set (slow)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    p.add_argument("--no-cache", action="store_true", help="re-evaluate every checkpoint")
    p.add_argument("--jobs", type=int, default=None, help="checkpoints evaluated at once, one process and one torch "
                   "thread each (default: one per core on the CPU, 1 on a GPU; under torchrun: 1, the images are split)")
    args = p.parse_args(argv)
    sat_plumbing.check_number("--limit", args.limit, 0, math.inf, hint=" (0 = every test image)")
    sat_plumbing.check_number("--block", args.block, 1, math.inf)
    if args.batch_size is not None:
        sat_plumbing.check_number("--batch-size", args.batch_size, 1, math.inf)
    sat_plumbing.check_number("--apgd-steps", args.apgd_steps, 1, 100_000)
    sat_plumbing.check_number("--square-queries", args.square_queries, 1, 1_000_000)
    sat_plumbing.check_jobs(args.jobs, 1)   # a bad --jobs: one line before any work; its default needs the device
    rank, world = sat_shards.world()
    if world > 1 and (args.jobs or 1) > 1:
        raise sat_plumbing.UserError("--jobs > 1 under torchrun: the processes already share each checkpoint's images")
    if args.eps is not None:
        attack.check_px("--eps", args.eps)
    args.max_pgd_steps = None   # SAT_SMOKE=1 (the command tests): a few images, a few steps of each attack
    vars(args).update(sat_plumbing.smoke_settings("eval", {k: getattr(args, k) for k in ("limit", "max_pgd_steps", "apgd_steps", "square_queries")}))
    if "best" in args.checkpoint and args.out == OUT_DIR:
        args.out = OUT_DIR + "_best"   # tables of their own: rows "[best epoch]" beside the final ones if both asked
    paths = [p for which in dict.fromkeys(args.checkpoint)   # every final.pt first, then every best.pt
             for p in sat_report.checkpoints_to_evaluate(args.runs, args.out, which)]   # or a one-line error naming the stage to run
    import matplotlib
    matplotlib.use("Agg")   # scripts only save figures; notebooks keep their own inline backend
    attacks_at_full_precision()
    device = sat_shards.start(sat_plumbing.pick_device(args.device))   # under torchrun: its process group, its GPU
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"evaluating {len(paths)} checkpoint(s) on {device}" + (f" x {world} processes" if world > 1 else "") +
        f"; attacks: FGSM, PGD-{{{','.join(map(str, PGD_STEPS))}}} (step max(eps/4, eps/k); eps/4 for 200), "
        f"PGD-200 through the smooth backward (ReLU models), APGD-CE/DLR and APGD-T ({args.apgd_steps} steps), "
        f"Square ({args.square_queries} queries)" + (", AutoAttack (reference)" if args.autoattack else ""))
    say(sat_report.ROW_HEADER)
    jobs = 1 if world > 1 else min(args.jobs or (sat_plumbing.cpu_count() if device.type == "cpu" else 1), len(paths))
    jobs = sat_plumbing.smoke_settings("eval", {"jobs": jobs})["jobs"]   # SAT_SMOKE=1: in this process
    if world > 1 and device.type == "cpu":
        torch.set_num_threads(1)   # as in_processes: one thread per process, the same numbers as one process
    t_all = time.time()
    results = [None] * len(paths)   # one process per checkpoint (sat_plumbing.in_processes); the same numbers as --jobs 1
    for i, (r, cached, sec) in sat_plumbing.in_processes(evaluate_job, [(path, args, str(device), i % jobs)
                                                                         for i, path in enumerate(paths)], jobs):
        results[i] = r
        if rank == 0:
            sat_report.print_row(r, cached, sec)
    sat_shards.stop()
    if rank == 0:
        comparisons = compare_with_relu(results)
        sat_report.report(results, comparison_table(comparisons) if comparisons else None, args.out, PGD_STEPS, MARGIN, t_all,
                          args.results)


if __name__ == "__main__":
    sat_plumbing.run_cli(main)
