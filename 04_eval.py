"""Stage 04: clean and robust accuracy of every checkpoint, checked for gradient masking; the paper's tables.
Measured (README, digits, 15 seeds, `python 03_adv_train.py --seeds 15` then this): worst case 37.4% for ReLU,
+5.3 points [+3.0, +7.6] with a smooth gradient for the attacker (Table 1), -4.2 [-6.5, -1.8] for SiLU (Figure 3).

Paper: arXiv:2006.14536, evaluation protocol (PGD-200, eps = 4/255, step 1/255, random start), Table 1 and
Figure 3. Evaluation hygiene after Carlini et al. 2019 (../shared/PAPER.md): an independent strong attack
(APGD, Croce & Hein 2020) and a gradient-free one (Square, Andriushchenko et al. 2020) from `torchattacks`
beside our PGD; the headline robust accuracy is the per-example worst case over all of them.

Per checkpoint (its own dataset and eps; step eps/4):
  clean, FGSM, PGD-k for k in 1, 10, 50, 200 (stage 02's early-stopping pgd_eval), APGD-CE, APGD-DLR,
  Square (margin loss), optionally AutoAttack's standard set (--autoattack); PGD-20 at 0.5/1/2/4/8 x eps.
  Worst case = robust only if robust to every attack run.
Masking checks (each failure is printed as a flag beside the model, with its numbers):
  steps       robust accuracy must not rise with more PGD steps (1 -> 10 -> 50 -> 200, one shared random
              start; step max(eps/4, eps/k), so 10, 50 and 200 share step eps/4), 1-point tolerance
  eps         at 8 x eps robust accuracy must fall to about chance (<= chance + 10 points)
  single-step FGSM must not be stronger than PGD-200 (1-point tolerance)
  independent APGD / Square must not beat PGD-200 by more than 3 points
Comparisons: each configuration minus plain ReLU (same data set, eps and test images) for clean, PGD-200
and worst-case accuracy, with a 95% bootstrap interval over seeds and test images; verdict "better" / "worse"
when the interval excludes 0, "equal" when it lies within +-3 points, else "undecided".

Run it:
    python 04_eval.py                        # every final.pt under runs/02_pgd and runs/03_adv_train
                                             # CPU: 74-76 s for the 11 default checkpoints on 2 cores
    python 04_eval.py --limit 1000 --batch-size 100    # ImageNet/CIFAR checkpoints: quick look on 1000 images
On the CPU `--jobs N` checkpoints are evaluated at once (default: one per core), one process and one torch
thread each; the numbers are those of `--jobs 1`.
Writes (runs/04_eval/; the code that writes them, and the cache, is in sat_report.py):
    results.csv, results.md          one row per configuration, mean +- std over seeds, paper columns beside
    per_run.csv                      every number for every checkpoint, with its attack parameters
    comparisons.csv, comparisons.md  each configuration minus plain ReLU, with its interval and verdict
    cache/<run>.json                 per-checkpoint results (re-used while the checkpoint is unchanged)
    figure3_acc_vs_robust.png        the paper's Figure 3: ours (left) beside the paper's ImageNet points (right)
    robust_vs_steps.png, robust_vs_eps.png
"""
import importlib
import math
import os
import time

import torch

import sat_models
import sat_plumbing
import sat_report
from sat_report import PAPER_FIGURE3, PAPER_TABLE1, aggregate, fmt, paper_numbers  # noqa: F401 (notebooks: ev.aggregate, ...)

attack = importlib.import_module("02_pgd")

OUT_DIR = os.path.join(sat_plumbing.RUNS_DIR, "04_eval")
PGD_STEPS = [1, 10, 50, 200]            # the steps check; 200 is the paper's evaluation attacker
EPS_FACTORS = [0.5, 1, 2, 4, 8]         # the eps check, PGD-20 at these multiples of the checkpoint's eps
APGD_STEPS = 100                        # torchattacks APGD iterations (AutoAttack's default is 100)
SQUARE_QUERIES = 1000                   # Square attack queries (AutoAttack uses 5000; --square-queries)
TOL_STEPS, TOL_FGSM, TOL_INDEP, TOL_CHANCE = 0.01, 0.01, 0.03, 0.10   # masking-check tolerances
COMPARED = {"clean": "clean", "pgd200": "PGD-200", "worst": "worst case"}   # the metrics compared with ReLU
MARGIN = 0.03             # "equal": the whole 95% interval of a difference lies within +-3 points
BOOTSTRAP = 2000          # bootstrap replicates per comparison


# ---- Attacks: every attack on one model, a robust/broken mask per test image ---------------------------------

def correct(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


def pgd_step(eps, steps):
    """Step of PGD-k here: max(eps/4, eps/k) for k < 200; eps/4 for PGD-200, the paper's 1/255 at eps 4/255."""
    return attack.default_step(eps, steps) if steps < 200 else eps / 4


def pgd_robust(model, x, y, eps, steps, max_steps=None):
    """Robust mask under PGD-k (stage 02's early-stopping pgd_eval, random start, step pgd_step).
    max_steps: stop every PGD there (the command tests' SAT_SMOKE=1, see sat_plumbing.smoke_settings)."""
    return attack.pgd_eval(model, x, y, eps, pgd_step(eps, steps), min(steps, max_steps or steps)) == -1


def batch_masks(model, x, y, eps, tas, seed, max_pgd_steps=None):
    """Per-example robust masks of one batch under every attack. tas: name -> torchattacks attack.
    The PGD-k runs share one random start (same seed), so their curve isolates the effect of more steps."""
    masks = {"clean": correct(model, x, y),
             "fgsm": correct(model, attack.pgd(model, x, y, eps, eps, 1, rand_start_prob=0.0), y)}
    for k in PGD_STEPS:
        torch.manual_seed(seed)
        masks[f"pgd{k}"] = pgd_robust(model, x, y, eps, k, max_pgd_steps)
    for name, atk in tas.items():
        masks[name] = correct(model, atk(x, y), y)
    for f in EPS_FACTORS:   # robust accuracy against eps (PGD-20): the eps check and the figure
        masks[f"eps_x{f}"] = pgd_robust(model, x, y, min(eps * f, 1.0), 20, max_pgd_steps)
    return masks


def evaluate_batches(model, batches, eps, num_classes, autoattack=False, square_queries=SQUARE_QUERIES,
                     apgd_steps=APGD_STEPS, seed=0, device="cpu", max_pgd_steps=None):
    """Every attack on one model, over an iterable of (x, y) batches (a DataLoader, or slices of tensors),
    so a data set never has to fit in memory. x in [0, 1]; eps in [0, 1] units.
    Returns accuracies (fractions), the attack parameters beside them, and the masking flags."""
    import torchattacks
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (in [0, 1] units), got {eps}")
    model.eval()
    e = f"eps={eps * 255:.4g}/255"
    params = {"fgsm": f"{e} step=eps, no random start"}
    for k in PGD_STEPS:
        params[f"pgd{k}"] = f"{e} step={pgd_step(eps, k) * 255:.4g}/255 steps={k} random start, any-iterate"
    tas = {f"apgd_{loss}": torchattacks.APGD(model, norm="Linf", eps=eps, steps=apgd_steps, n_restarts=1, loss=loss, seed=seed)
           for loss in ("ce", "dlr")}
    tas["square"] = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=square_queries, n_restarts=1, seed=seed)
    params.update({f"apgd_{loss}": f"torchattacks.APGD {e} steps={apgd_steps} restarts=1 loss={loss}" for loss in ("ce", "dlr")})
    if num_classes < 3:   # DLR divides by the gap between the 1st and 3rd largest logits
        del tas["apgd_dlr"]
        params["apgd_dlr"] = "not run: the DLR loss needs at least 3 classes"
    params["square"] = f"torchattacks.Square {e} queries={square_queries} loss=margin"
    if autoattack:
        tas["autoattack"] = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=num_classes, seed=seed)
        params["autoattack"] = f"torchattacks.AutoAttack standard {e}"
    masks = {}
    for i, (x, y) in enumerate(batches):
        for k, m in batch_masks(model, x.to(device), y.to(device), eps, tas, seed + i, max_pgd_steps).items():
            masks.setdefault(k, []).append(m.cpu())
    masks = {k: torch.cat(v) for k, v in masks.items()}
    attacks_run = ["fgsm"] + [f"pgd{k}" for k in PGD_STEPS] + list(tas)
    masks["worst"] = masks["clean"].clone()
    for k in attacks_run:
        masks["worst"] &= masks[k]
    params["worst"] = "per-example worst case over " + ", ".join(attacks_run)
    res = {"apgd_dlr": float("nan")}   # stays NaN where it was not run
    res.update({k: v.float().mean().item() for k, v in masks.items() if not k.startswith("eps_x")})
    res["eps_curve"] = {f"{min(eps * f, 1.0) * 255:.4g}": masks[f"eps_x{f}"].float().mean().item() for f in EPS_FACTORS}
    res["params"] = params
    res["n"] = len(masks["clean"])
    res["flags"] = masking_flags(res, num_classes)
    # which test images each model got right, for the paired bootstrap of the comparisons: '0'/'1' per image
    res["per_image"] = {k: "".join("1" if b else "0" for b in masks[k].tolist()) for k in COMPARED}
    return res


def evaluate_model(model, x, y, eps, num_classes, batch_size=500, **kw):
    """evaluate_batches on tensors x (N, C, H, W) in [0, 1] and y (N,), in batches of batch_size. A user's tensors
    enter here: normalised inputs are refused (stage 02's check_pixels), once, not in every attack step."""
    attack.check_pixels(x)
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    return evaluate_batches(model, batches, eps, num_classes, device=x.device, **kw)


# ---- Masking checks (Carlini et al. 2019): numbers that cannot be reported as they are -----------------------

def masking_flags(r, num_classes):
    """The Carlini et al. sanity checks, each failure a short string with its numbers."""
    flags = []
    pgd = [r[f"pgd{k}"] for k in PGD_STEPS]
    for (k1, a1), (k2, a2) in zip(zip(PGD_STEPS, pgd), zip(PGD_STEPS[1:], pgd[1:])):
        if a2 > a1 + TOL_STEPS + 1e-9:   # 1e-9: a gap of exactly the tolerance is not a failure
            flags.append(f"steps: PGD-{k2} {100 * a2:.1f}% > PGD-{k1} {100 * a1:.1f}%")
    chance = 1.0 / num_classes
    last_eps, last_acc = list(r["eps_curve"].items())[-1]
    if last_acc > chance + TOL_CHANCE + 1e-9:
        flags.append(f"eps: {100 * last_acc:.1f}% at eps {last_eps}/255, chance is {100 * chance:.0f}%")
    if r["fgsm"] < r["pgd200"] - TOL_FGSM - 1e-9:
        flags.append(f"single-step: FGSM {100 * r['fgsm']:.1f}% < PGD-200 {100 * r['pgd200']:.1f}%")
    for k in ("apgd_ce", "apgd_dlr", "square", "autoattack"):
        if k in r and r[k] < r["pgd200"] - TOL_INDEP - 1e-9:
            flags.append(f"independent: {k} {100 * r[k]:.1f}% < PGD-200 {100 * r['pgd200']:.1f}%")
    return flags

# ---- Comparison with ReLU: a difference, its 95% interval, a verdict -----------------------------------------

def bootstrap_diff(a, b, reps=BOOTSTRAP, seed=0):
    """Difference of accuracies a - b with a 95% bootstrap interval. a: (seeds of the configuration, images)
    and b: (seeds of the reference, images), 0/1 per test image, the SAME images in the same order.
    Two sources of noise, both resampled: the test images (one draw of n images with replacement per
    replicate, shared by a and b: the pairing, which cancels the images both get right or both get wrong)
    and the seeds (drawn with replacement, separately for a and b: their training runs are independent).
    Returns (difference, low, high) as fractions."""
    import numpy as np
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    n, diffs = a.shape[1], []
    for chunk in range(0, reps, 250):                       # 250 replicates at a time bound the memory
        k = min(250, reps - chunk)
        w = rng.multinomial(n, np.full(n, 1 / n), size=k).T.astype(np.float32) / n   # (n, k) image weights
        acc_a, acc_b = a @ w, b @ w                          # (seeds, k): each seed's accuracy per replicate
        pick_a = rng.integers(0, len(a), (len(a), k))        # resampled seeds, per replicate
        pick_b = rng.integers(0, len(b), (len(b), k))
        cols = np.arange(k)
        diffs.append(acc_a[pick_a, cols].mean(0) - acc_b[pick_b, cols].mean(0))
    lo, hi = np.percentile(np.concatenate(diffs), [2.5, 97.5])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def verdict(lo, hi, margin=MARGIN):
    """better / worse: the interval excludes 0; equal: it lies within +-margin; else undecided."""
    return "better" if lo > 0 else "worse" if hi < 0 else "equal" if -margin <= lo and hi <= margin else "undecided"


def compare_with_relu(results):
    """Every configuration against plain ReLU (same data set, eps and test images, adversarial training): the
    activations of Figure 3 and the smooth-backward rows of Table 1. One row per configuration."""
    import numpy as np

    def grid(runs, k):   # (seeds, images): which test images each run got right, by metric k
        return np.array([[c == "1" for c in r["per_image"][k]] for r in runs])

    groups = {}
    for r in results:
        if r["train_attack"] != "none" and "per_image" in r:
            groups.setdefault((r["dataset"], r["eps_px"], r["n"]), {}).setdefault(sat_report.config_label(r), []).append(r)
    rows = []
    for (dataset, eps_px, n), by_label in groups.items():
        ref = by_label.get(f"{dataset} relu")
        if not ref:
            continue
        for label, rs in by_label.items():
            if label == f"{dataset} relu":
                continue
            row = {"configuration": label, "vs": f"{dataset} relu", "eps": f"{eps_px:g}/255", "n_test": n,
                   "seeds": f"{len(rs)} vs {len(ref)}"}
            for k in COMPARED:
                d, lo, hi = bootstrap_diff(grid(rs, k), grid(ref, k))
                row[k] = (d, lo, hi, verdict(lo, hi) if len(rs) > 1 and len(ref) > 1 else "one seed: no verdict")
            paper, paper_relu = paper_numbers(rs[0]["act"], rs[0]["smooth_grad"]), PAPER_TABLE1["none"]
            row["paper"] = f"{paper[1] - paper_relu[1]:+.1f} (ImageNet PGD-200)" if paper else ""
            rows.append(row)
    return rows


def comparison_table(rows):
    """compare_with_relu's rows as (headers, rows of strings): differences and intervals in points."""
    heads = ["configuration", "vs", "seeds", "test images"] + [f"{h} Δ (95% CI)" for h in COMPARED.values()] + \
            [f"{h} verdict" for h in COMPARED.values()] + ["paper Δ"]
    cells = [[row["configuration"], row["vs"], row["seeds"], str(row["n_test"])] +
             [f"{100 * row[k][0]:+.1f} [{100 * row[k][1]:+.1f}, {100 * row[k][2]:+.1f}]" for k in COMPARED] +
             [row[k][3] for k in COMPARED] + [row["paper"] or "—"] for row in rows]
    return heads, cells


# ---- Every checkpoint under runs/ (finding them, their test images, the cache: sat_report.py) ----------------

def evaluate_checkpoint(path, args, device):
    """Every attack on one checkpoint: its own model, data set and eps (or --eps), its first --limit test images.
    The result carries the run's configuration, which the tables group by."""
    model, ckpt = sat_models.model_from_checkpoint(path, device)
    cfg = ckpt["config"]
    eps_px = args.eps if args.eps is not None else cfg["eps"]
    batches = sat_report.test_batches(cfg, args.data, args.limit, args.batch_size)
    res = evaluate_batches(model, batches, attack.px(eps_px), cfg["num_classes"], args.autoattack, args.square_queries,
                           args.apgd_steps, device=device, max_pgd_steps=args.max_pgd_steps)
    res.update(run=os.path.basename(os.path.dirname(path)), path=path, dataset=cfg["dataset"], model=cfg["model"],
               act=cfg["act"], smooth_grad=cfg["smooth_grad"], train_attack=cfg["attack"], seed=cfg["seed"],
               eps_px=eps_px, epochs=ckpt.get("epoch"))
    return res


def evaluate_job(job):
    """One (path, args, device) in a --jobs worker process, from the cache while the checkpoint and settings are
    unchanged: (result, cached, seconds)."""
    path, args, device = job
    t = time.time()
    r, cached = sat_report.cached(path, args, lambda: evaluate_checkpoint(path, args, torch.device(device)))
    return r, cached, time.time() - t


# ---- main ----------------------------------------------------------------------------------------------------

def main(argv=None):
    p = sat_plumbing.ArgumentParser(description="Evaluate every checkpoint under --runs (see the module docstring).")
    p.add_argument("--runs", default=sat_plumbing.RUNS_DIR, help="folder searched for final.pt files (default runs: its 02_pgd/ and 03_adv_train/)")
    p.add_argument("--out", default=OUT_DIR, help="output folder (default runs/04_eval)")
    p.add_argument("--data", default=None, help="cifar10/fashionmnist/imagenet data folder (default: the one in the checkpoint's config)")
    p.add_argument("--eps", type=float, default=None, help="evaluate at this eps, pixel units (default: each checkpoint's own)")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N test images only (0 = all)")
    p.add_argument("--batch-size", type=int, default=500, help="images per attack batch")
    p.add_argument("--apgd-steps", type=int, default=APGD_STEPS, help="APGD iterations")
    p.add_argument("--square-queries", type=int, default=SQUARE_QUERIES, help="Square attack queries")
    p.add_argument("--autoattack", action="store_true", help="also run AutoAttack's standard set (slow)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    p.add_argument("--no-cache", action="store_true", help="re-evaluate every checkpoint")
    p.add_argument("--jobs", type=int, default=None, help="checkpoints evaluated at once, one process and one torch "
                   "thread each (default: one per core on the CPU, 1 on a GPU)")
    args = p.parse_args(argv)
    sat_plumbing.check_number("--limit", args.limit, 0, math.inf, hint=" (0 = every test image)")
    sat_plumbing.check_number("--batch-size", args.batch_size, 1, math.inf)
    sat_plumbing.check_number("--apgd-steps", args.apgd_steps, 1, 100_000)
    sat_plumbing.check_number("--square-queries", args.square_queries, 1, 1_000_000)
    sat_plumbing.check_jobs(args.jobs, 1)   # a bad --jobs: one line before any work; its default needs the device
    if args.eps is not None:
        attack.check_px("--eps", args.eps)
    args.max_pgd_steps = None   # SAT_SMOKE=1 (the command tests): a few images, a few steps of each attack
    vars(args).update(sat_plumbing.smoke_settings("eval", {k: getattr(args, k) for k in ("limit", "max_pgd_steps", "apgd_steps", "square_queries")}))
    paths = sat_report.checkpoints_to_evaluate(args.runs, args.out)   # or a one-line error naming the stage to run
    import matplotlib
    matplotlib.use("Agg")   # scripts only save figures; notebooks keep their own inline backend
    device = sat_plumbing.pick_device(args.device)
    print(f"evaluating {len(paths)} checkpoint(s) on {device}; attacks: FGSM, PGD-{{{','.join(map(str, PGD_STEPS))}}} "
          f"(step max(eps/4, eps/k); eps/4 for 200), APGD-CE/DLR ({args.apgd_steps} steps), Square ({args.square_queries} queries)"
          + (", AutoAttack" if args.autoattack else ""))
    print(sat_report.ROW_HEADER)
    jobs = min(args.jobs or (sat_plumbing.cpu_count() if device.type == "cpu" else 1), len(paths))
    jobs = sat_plumbing.smoke_settings("eval", {"jobs": jobs})["jobs"]   # SAT_SMOKE=1: in this process
    t_all = time.time()
    results = [None] * len(paths)   # one process per checkpoint (sat_plumbing.in_processes); the same numbers as --jobs 1
    for i, (r, cached, sec) in sat_plumbing.in_processes(evaluate_job, [(path, args, str(device)) for path in paths], jobs):
        results[i] = r
        sat_report.print_row(r, cached, sec)
    comparisons = compare_with_relu(results)
    sat_report.report(results, comparison_table(comparisons) if comparisons else None, args.out, PGD_STEPS, MARGIN, t_all)


if __name__ == "__main__":
    sat_plumbing.run_cli(main)
