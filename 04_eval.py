"""Stage 04: clean and robust accuracy of every checkpoint, checked for gradient masking; the paper's tables.
Measured (RESULTS.md, digits, 15 seeds, `python 03_adv_train.py --seeds 15` then this): worst case 35.2% for ReLU,
+5.0 points [+2.6, +7.5] with a smooth gradient for the attacker (Table 1), -4.6 [-7.0, -2.2] for SiLU (Figure 3).

Paper: arXiv:2006.14536, evaluation protocol (PGD-200, eps = 4/255, step 1/255, random start), Table 1, Figure 3;
evaluation hygiene after Carlini et al. 2019 (docs/PAPER.md). Per checkpoint, at its own eps:
  attacks     FGSM; PGD-1/10/50/200 (stage 02, step max(eps/4, eps/k)); for models with ReLUs, PGD-200 through the
              smooth backward (adaptive); APGD-CE/DLR and Square (torchattacks); the reference APGD-T (pyautoattack);
              --autoattack: the reference AutoAttack; PGD-20 at 0.5 to 8 x eps
  worst case  robust only if robust to every attack run: the headline number
  masking     more PGD steps must not help; at 8 x eps accuracy must fall to chance; FGSM must not beat PGD-200; no
              independent attack may beat PGD-200 by more than 3 points. Each failure is a flag beside the model
  vs ReLU     each configuration minus plain ReLU of the same recipe, with a 95% bootstrap interval over seeds and
              test images: better / worse (it excludes 0), equal (within +-3 points), else undecided
Run it:
    python 04_eval.py                        # every final.pt under runs/02_pgd and runs/03_adv_train; CPU: 143 s
                                             # for the 11 default checkpoints on 2 idle cores
    python 04_eval.py --limit 1000           # ImageNet/CIFAR checkpoints: quick look on 1000 images
    torchrun --nproc_per_node 8 04_eval.py --subset robustbench    # each checkpoint's images over 8 GPUs (NCCL)
Writes runs/04_eval/: results.md/.csv (a row per configuration, mean +- std over seeds, the paper's beside), per_run.csv
(every number with its attack parameters), per_image.json, comparisons.md/.csv, figures. The harness (seeds per
image and block, --jobs, torchrun, the cache, resume): sat_eval_run.py; the tables: sat_report.py.
Your own model (any nn.Module on pixels in [0, 1], or --own-model WEIGHTS.pt --arch --act --dataset): docs/SNIPPETS.md.
"""
import copy
import importlib
import json
import os
import sys
import time

import torch

import sat_cli
import sat_eval_run
import sat_files
import sat_report
import sat_shards
import sat_stats
from sat_report import PAPER_FIGURE3, PAPER_TABLE1, aggregate, fmt, paper_numbers  # noqa: F401 (notebooks: ev.aggregate, ...)

acts = importlib.import_module("01_activations")
attack = importlib.import_module("02_pgd")

OUT_DIR = os.path.join(sat_files.RUNS_DIR, "04_eval")
PGD_STEPS = [1, 10, 50, 200]            # the steps check; 200 is the paper's evaluation attacker
EPS_FACTORS = [0.5, 1, 2, 4, 8]         # the eps check, PGD-20 at these multiples of the checkpoint's eps
APGD_STEPS = 100                        # torchattacks APGD iterations (AutoAttack's default is 100)
SQUARE_QUERIES = 1000                   # Square attack queries (AutoAttack uses 5000; --square-queries)
BLOCK = 100                             # images per block, the unit of the attacks' randomness (--block)
TOL_STEPS, TOL_FGSM, TOL_INDEP, TOL_CHANCE = 0.01, 0.01, 0.03, 0.10   # masking-check tolerances
COMPARED = {"clean": "clean", "pgd200": "PGD-200", "worst": "worst case"}   # the metrics compared with ReLU
MARGIN = 0.03             # "equal": the whole 95% interval of a difference lies within +-3 points
BOOTSTRAP = 20000         # bootstrap replicates per comparison (Monte Carlo error of an interval end: ~0.05 points)


# ---- The attacks: every attack on one model, a robust/broken mask per test image --------------------------------

def correct(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


def pgd_robust(model, x, y, eps, steps, u, max_steps=None):
    """Robust mask under PGD-k (stage 02's early-stopping pgd_eval, its default step max(eps/4, eps/k)), starting at
    eps * u: u holds each image's own random direction (sat_eval_run.random_starts). max_steps: stop every PGD there
    (the command tests' SAT_SMOKE=1)."""
    return attack.pgd_eval(model, x, y, eps, attack.default_step(eps, steps), min(steps, max_steps or steps), delta0=eps * u) == -1


def has_relu(model):
    """Does the forward hold ReLUs (nn.ReLU, or stage 01's SmoothGradReLU)? Then the adaptive attack applies."""
    return any(isinstance(m, torch.nn.ReLU) for m in model.modules()) or bool(acts.switchable_relus(model))


def smooth_backward_copy(model):
    """An adaptive attacker for ReLU models (BPDA-style, Athalye et al. 2018): a copy of the model whose ReLUs
    backpropagate SAT's smooth gradient, sigmoid(alpha x) in place of ReLU's step (01's SmoothGradReLU, always
    smooth). Its forward is the model's, bit for bit, so PGD on the copy attacks the model itself with a gradient
    that knows Table 1's trick (notebook 2: 3.7-5.2 points more than plain PGD on a ReLU model)."""
    m = copy.deepcopy(model)
    acts.swap_activations(m, "relu", smooth_grad=True, kinds=(torch.nn.ReLU,))   # each nn.ReLU -> a SmoothGradReLU
    for relu in acts.switchable_relus(m):
        relu.smooth = True
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


def block_masks(model, x, y, first, b, eps, num_classes, s, smooth_model=None):
    """Per-image robust masks of block b (its first image is number `first` of the evaluated list) under every
    attack. smooth_model: the adaptive attacker's copy (smooth_backward_copy), or None for a model without ReLU."""
    u = sat_eval_run.random_starts(x, first, s["seed"])   # each image's own PGD start, whatever block it is in
    mx = s["max_pgd_steps"]
    masks = {"clean": correct(model, x, y),
             "fgsm": correct(model, attack.pgd(model, x, y, eps, eps, 1, rand_start_prob=0.0), y)}
    for k in PGD_STEPS:
        masks[f"pgd{k}"] = pgd_robust(model, x, y, eps, k, u, mx)
    if smooth_model is not None:
        masks["pgd200_sg"] = pgd_robust(smooth_model, x, y, eps, 200, u, mx)
    for name, atk in independent_attacks(model, eps, num_classes, s, sat_eval_run.block_seed(s["seed"], b), x.device).items():
        masks[name] = correct(model, atk(x, y), y)
    for f in EPS_FACTORS:   # robust accuracy against eps (PGD-20): the eps check and the figure
        e = min(eps * f, 1.0)   # beyond 1 the ball holds the whole pixel box: every point keeps its own key
        masks[f"eps_x{f:g}"] = pgd_robust(model, x, y, e, 20, u, mx)
    return masks


# ---- The worst case: robust only if robust to every attack ------------------------------------------------------

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


def evaluate_model(model, x, y, eps, num_classes, adaptive=None, autoattack=False, apgd_steps=APGD_STEPS,
                   square_queries=SQUARE_QUERIES, block=BLOCK, seed=0, max_pgd_steps=None):
    """Every attack on one model, on tensors x (N, C, H, W) in [0, 1] and y (N,), in this process, block by block
    (the same numbers as stage 04's command, sharded or not). eps in [0, 1] units. adaptive: run the smooth-backward
    PGD (default: when the model holds a ReLU). The other settings are the command's (--apgd-steps, ...).
    Returns accuracies (fractions), the attack parameters beside them, and the masking flags."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (in [0, 1] units), got {eps}")
    attack.check_pixels(x)   # a user's tensors enter here: normalised inputs are refused, once
    s = sat_eval_run.attack_settings(autoattack=autoattack, square_queries=square_queries, apgd_steps=apgd_steps,
                                     seed=seed, max_pgd_steps=max_pgd_steps, block=block)
    model.eval()
    adaptive = has_relu(model) if adaptive is None else adaptive
    smooth = smooth_backward_copy(model) if adaptive else None
    masks = {}
    for b, first in enumerate(range(0, len(y), block)):
        xb, yb = x[first:first + block], y[first:first + block]
        for k, m in block_masks(model, xb, yb, first, b, eps, num_classes, s, smooth).items():
            masks.setdefault(k, []).append(m.cpu())
    masks = {k: torch.cat(v) for k, v in masks.items()}
    return summarize(masks, sat_eval_run.attack_params(sys.modules[__name__], eps, num_classes, s, adaptive), eps, num_classes)


# ---- Masking checks (Carlini et al. 2019): numbers that cannot be reported as they are -----------------------

def masking_flags(r, num_classes):
    """The Carlini et al. sanity checks, each failure a short string with its numbers."""
    n, flags = r["n"], []
    count = lambda acc: round(acc * n)   # noqa: E731 images, not rounded percentages: 15 of 500 is 3 points, no failure
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

def bootstrap_diff(a, b, reps=BOOTSTRAP, seed=0, paired=False, replicates=False):
    """Difference of accuracies a - b with a 95% bootstrap interval. a: (seeds of the configuration, images)
    and b: (seeds of the reference, images), 0/1 per test image, the SAME images in the same order.
    Two sources of noise, both resampled: the test images (one draw of n images with replacement per
    replicate, shared by a and b: the pairing, which cancels the images both get right or both get wrong)
    and the seeds: separately for a and b, or (paired=True) one draw of seed indices for both, where row i of
    each was trained with seed i, hence the same initial weights, data order and random starts (checked for
    every activation by tests/test_statistics.py). Returns (difference, low, high) as fractions, or with
    replicates=True (difference, the reps replicates)."""
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
    d, diffs = float(a.mean() - b.mean()), np.concatenate(diffs)
    return (d, diffs) if replicates else (d, *sat_stats.interval(diffs))


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
    sat_report.warn_of_repeated_seeds(results)   # a copied run folder would count twice

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
            for k in COMPARED:   # (difference, low, high, verdict, Monte Carlo error, p-value)
                d, reps = bootstrap_diff(grid(rs, k), grid(ref, k), seed=seed, paired=paired, replicates=True)
                row[k] = (d, *sat_stats.judge(reps, MARGIN, verdict, decided=len(rs) > 1 and len(ref) > 1))
            paper, paper_relu = paper_numbers(rs[0]["act"], rs[0]["smooth_grad"]), PAPER_TABLE1["none"]
            row["paper"] = f"{paper[1] - paper_relu[1]:+.1f} (ImageNet PGD-200)" if paper else ""
            family.append(row)
        rows += sat_stats.with_holm(family, COMPARED)   # + the verdict after Holm over this study's rows, per metric
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


# ---- main -----------------------------------------------------------------------------------------------------

def main(argv=None):
    args = sat_eval_run.parse_args(sys.modules[__name__], argv)   # --help lists every setting; a bad value: one line
    t_all = time.time()
    if args.compare_results:   # a committed study compared again from its small files (no attack runs)
        comparisons = compare_with_relu(sat_report.results_from_files(args.compare_results))
        print(sat_report.write_comparisons(*comparison_table(comparisons), args.out, args.results))
        return
    paths = [p for which in dict.fromkeys(args.checkpoint)   # every final.pt first, then every best.pt
             for p in sat_report.checkpoints_to_evaluate(args.runs, args.out, which)   # or a one-line error naming the stage to run
             ] if not args.own_model else [sat_eval_run.own_checkpoint(args)]   # or your own model's state dict
    import matplotlib
    matplotlib.use("Agg")   # scripts only save figures; notebooks keep their own inline backend
    results = sat_eval_run.evaluate_all(sys.modules[__name__], args, paths)   # --jobs or torchrun; a row each
    if results is not None:   # rank 0
        comparisons = compare_with_relu(results)
        sat_report.report(results, comparison_table(comparisons) if comparisons else None, args.out, PGD_STEPS, MARGIN, t_all,
                          args.results)


if __name__ == "__main__":
    sat_cli.run_cli(main, interrupted="the checkpoints and blocks of images evaluated so far are kept in the cache")
