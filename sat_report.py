"""Stage 04's reporting. A reader of the paper may skip all of it: the evaluation protocol is in 04_eval.py.

Finding the checkpoints under runs/, their test images, the per-checkpoint cache, the printed lines, and what
stage 04 writes: results.md/.csv (one row per configuration, mean +- std over seeds, the paper's numbers
beside), per_run.csv, comparisons.md/.csv and the figures. 04_eval.py passes in what these need of the protocol
(its PGD step counts, its comparison table, its margin); nothing here imports it.
"""
import csv
import glob
import importlib
import json
import math
import os
import statistics
import sys
import time

import torch

import sat_cli
import sat_data
import sat_files
import sat_processes

acts = importlib.import_module("01_activations")

# The paper's ImageNet ResNet-50 numbers (docs/PAPER.md): clean %, PGD-200 robust %
PAPER_TABLE1 = {"none": (68.8, 33.0), "attacker": (68.3, 34.5), "optimizer": (69.4, 35.8), "both": (68.9, 36.9)}
PAPER_FIGURE3 = {"relu": (68.8, 33.0), "psoftplus": (68.8, 38.7), "softplus": (68.4, 40.0),
                 "smoothrelu": (69.4, 40.3), "elu": (69.2, 41.7), "gelu": (70.0, 41.7), "silu": (69.7, 42.3)}


def paper_numbers(act, smooth_grad):
    """(clean, PGD-200) from the paper for this configuration, or None."""
    if act == "relu":
        return PAPER_TABLE1.get(smooth_grad)
    return PAPER_FIGURE3.get(act) if smooth_grad == "none" else None


# ---- Checkpoints, test images, the cache ---------------------------------------------------------------------

STAGE_DIRS = ("02_pgd", "03_adv_train")   # where the stages put their runs, below --runs


def find_checkpoints(root, which="final"):
    """Every run's final.pt (which="best": best.pt, the early-stopped epoch of a run with a validation split):
    below root/02_pgd and root/03_adv_train when those exist (stage 02's standard model and every stage 03 run;
    not studies or notebooks writing elsewhere under runs/), else below root."""
    dirs = [os.path.join(root, d) for d in STAGE_DIRS if os.path.isdir(os.path.join(root, d))] or [root]
    return sorted(p for d in dirs for p in glob.glob(os.path.join(d, "**", f"{which}.pt"), recursive=True))


def checkpoints_to_evaluate(runs, out, which="final"):
    """find_checkpoints(runs, which) once --runs and --out are usable, or a one-line error that says what to run
    first. which="best": the runs without a validation split (no best.pt) are named in one note."""
    if os.path.isfile(runs):
        raise sat_cli.UserError(f"--runs {runs!r} is a file; give the folder the stages wrote to (default: runs)")
    if not os.path.isdir(runs):
        raise sat_cli.UserError(f"no outputs folder {runs!r}: run the earlier stages first (python 02_pgd.py, python 03_adv_train.py)")
    sat_cli.check_out_dir(out)
    paths = find_checkpoints(runs, which)
    if which == "best":
        finals = find_checkpoints(runs)
        if not paths:
            raise sat_cli.UserError(f"no best.pt under {runs!r}: only runs with a validation split have one "
                                         f"(python 03_adv_train.py --val-size N; the fashionmnist and cifar10 presets hold one out)")
        lacking = len({os.path.dirname(p) for p in finals} - {os.path.dirname(p) for p in paths})
        if lacking:
            print(f"note: --checkpoint best: {lacking} run(s) without a validation split have no best.pt and are left out")
    if not paths:
        raise sat_cli.UserError(f"no final.pt under {runs!r}: run python 03_adv_train.py (and python 02_pgd.py for the standard model) first")
    return paths


ROBUSTBENCH_IDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources", "robustbench_imagenet_val_ids.txt")


def robustbench_subset(ds, ids_file=ROBUSTBENCH_IDS):
    """The indices of ds (an ImageFolder of ImageNet's val/) whose '<class>/<file>' is in RobustBench's list of
    5,000 validation images (resources/README.md), in the folder's order. One error line when some are missing."""
    with open(ids_file) as f:
        ids = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    root = ds.root
    pick = [i for i, (p, _) in enumerate(ds.samples) if os.path.relpath(p, root).replace(os.sep, "/") in ids]
    if not pick:
        raise sat_cli.UserError(f"--subset robustbench: none of the {len(ids)} listed images is under {root!r}")
    if len(pick) < len(ids) and sat_processes.world()[0] == 0:
        print(f"note: --subset robustbench: {len(pick)} of the {len(ids)} listed images are under {root!r}")
    return pick


def test_images(cfg, data_dir, limit, subset="all"):
    """The checkpoint's test images (a Dataset): its test split, RobustBench's ImageNet subset with
    subset='robustbench', then the first `limit` of them (0 = all), a fixed list."""
    ds = sat_data.get_dataset(cfg["dataset"], "test", data_dir or cfg.get("data", "data"), cfg.get("image_size", 224))
    idx = list(range(len(ds)))
    if subset == "robustbench":
        if cfg["dataset"] != "imagenet":
            raise sat_cli.UserError(f"--subset robustbench is a list of ImageNet images; this checkpoint is {cfg['dataset']}")
        idx = robustbench_subset(ds)
    if limit:
        idx = idx[:limit]
    return torch.utils.data.Subset(ds, idx) if len(idx) < len(ds) else ds


def loader_workers(ds, workers=4):
    """DataLoader processes for the images: none for the in-memory sets (digits, Fashion-MNIST)."""
    base = ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds
    return 0 if isinstance(base, torch.utils.data.TensorDataset) else min(workers, os.cpu_count() or 1)


def cache_key(path, args, cfg, attack_settings, subset="all"):
    """Everything that changes a checkpoint's results, and nothing that does not (batch size, process count,
    --jobs): the checkpoint's CONTENT (sha256), its data folder, the image subset, eps, the attack settings."""
    data = os.path.abspath(args.data or cfg.get("data", "data")) if cfg["dataset"] != "digits" else "built-in"
    return {"version": 3, "sha256": sat_files.file_sha256(path), "data": data, "subset": subset,
            "limit": args.limit, "eps": args.eps, **attack_settings}


def cache_file(path, args):
    """<out>/cache/<run path below --runs>.json; its unfinished blocks go in the folder beside it."""
    return os.path.join(args.out, "cache", os.path.relpath(path, args.runs).replace(os.sep, "__") + ".json")


def cached_result(cache, key):
    """The saved result when its key matches, else None."""
    saved = sat_files.read_json(cache)
    return saved["result"] if saved and saved.get("key") == key else None


def result_of_same_final(path, ckpt, args, s, subset):
    """A best.pt whose epoch is its run's last holds final.pt's weights: final.pt's saved result (same test
    images and attack settings), relabelled, when this evaluation has it; else None (it is then evaluated)."""
    final = os.path.join(os.path.dirname(path), "final.pt")
    if ckpt.get("selected") != "best" or not os.path.isfile(final):
        return None
    fin = sat_files.load_checkpoint(final)
    if fin.get("epoch") != ckpt.get("epoch") or any(not torch.equal(fin["model"][k], ckpt["model"][k]) for k in ckpt["model"]):
        return None
    r = cached_result(cache_file(final, args), cache_key(final, args, fin["config"], s, subset))
    if r is not None:
        r = {**r, "run": r["run"] + "@best", "path": path, "checkpoint": "best", "recipe": {**r["recipe"], "checkpoint": "best"}}
    return r


# ---- The printout, the tables --------------------------------------------------------------------------------

ROW_HEADER = (f"{'run':<34} {'eps':>7} {'clean':>6} {'FGSM':>6} {'PGD200':>6} {'PGDsg':>6} {'APGDce':>6} {'APGDdlr':>7} {'APGD-T':>6} {'Square':>6} "
              f"{'worst':>6} {'sec':>5}  flags")


def pct(v):
    return "—" if math.isnan(v) else f"{100 * v:.1f}"


def print_row(r, cached, sec):
    """One checkpoint's line under ROW_HEADER: its accuracies in %, its seconds (or 'cache'), its masking flags."""
    print(f"{r['run']:<34} {r['eps_px']:>5g}/255 {100 * r['clean']:>5.1f} {100 * r['fgsm']:>5.1f} {100 * r['pgd200']:>5.1f} "
          f"{pct(r.get('pgd200_sg', math.nan)):>6} {100 * r['apgd_ce']:>5.1f} {100 * r['apgd_dlr']:>6.1f} {pct(r.get('apgd_t', math.nan)):>6} {100 * r['square']:>5.1f} {100 * r['worst']:>5.1f} "
          f"{'cache' if cached else f'{sec:5.0f}'}  {'; '.join(r['flags']) or 'ok'}", flush=True)


# A configuration (a recipe) is every training setting of a run's config except its seed. These are not
# training settings: where files go, how the run was spread over hardware, how often it saved or checked.
NOT_RECIPE = ("seed", "out", "data", "download", "device", "workers", "threads", "check_size", "checkpoint_every",
              "channels_last", "compile")


def recipe(cfg):
    """The run's configuration: its config without the seed and the settings that change no weight."""
    return {k: v for k, v in sorted({"val_size": 0, **cfg}.items()) if k not in NOT_RECIPE}   # val_size: older runs had none


def config_label(r, extra=()):
    """A configuration's name, e.g. 'digits relu (smooth grad: attacker)', followed by the recipe fields in
    `extra` (those that tell it apart from another configuration of the same name), e.g. '(model=resnet101)',
    and ', best epoch' for early-stopped checkpoints (best.pt)."""
    sg = f" (smooth grad: {r['smooth_grad']})" if r["smooth_grad"] != "none" else ""
    std = {"none": " standard training", "own model": " (own model)"}.get(r["train_attack"], "")   # --own-model: not trained here
    more = ", ".join(f"{k}={r['recipe'][k]}" for k in extra if k != "checkpoint")
    best = " [best epoch]" if r.get("checkpoint") == "best" else ""
    return f"{r['dataset']} {r['act']}{sg}{std}{best}" + (f" ({more})" if more else "")


def recipe_key(r):
    return json.dumps(r.get("recipe") or [r["dataset"], r["act"], r["smooth_grad"], r["train_attack"]], sort_keys=True)


def warn_of_repeated_seeds(results):
    """One stderr line for each two checkpoints of one configuration, seed and test set, e.g. a run folder copied
    or renamed under --runs: the means would count it as two seeds, and the comparison with ReLU would not pair
    the seeds. A warning, not an error: a copy can be meant (a test of the evaluation, a rerun for determinism).
    (final.pt and best.pt of one run are two configurations: '[best epoch]'.)"""
    seen = {}
    for r in results:
        key, where = (recipe_key(r), r["seed"], r["eps_px"], r["n"]), r.get("path", r["run"])
        if key in seen:
            print(f"warning: {seen[key]} and {where} are one configuration with one seed ({config_label(r)}, seed "
                  f"{r['seed']}): the tables count them as two seeds and the comparison with ReLU is not paired; "
                  "if one is a copy, move it out of --runs", file=sys.stderr)
        seen.setdefault(key, where)


def config_labels(results):
    """{recipe_key: label}: one label per configuration; where two configurations share a name (two models of
    one activation, two batch sizes, ...) each label names the recipe fields in which they differ."""
    by_name = {}
    for r in results:
        by_name.setdefault(config_label(r), {}).setdefault(recipe_key(r), r)
    labels = {}
    for name, recipes in by_name.items():
        rs = list(recipes.values())
        differ = [k for k in rs[0].get("recipe", {}) if len({json.dumps(r["recipe"].get(k)) for r in rs}) > 1] if len(rs) > 1 else []
        for key, r in recipes.items():
            labels[key] = config_label(r, differ)
    return labels


def mean_std(values):
    """(mean, std) over seeds; std is NaN for one seed; both NaN where the attack was not run."""
    if any(math.isnan(v) for v in values):
        return float("nan"), float("nan")
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else float("nan")
    return m, s


def fmt(m, s):
    """A (mean, std) of fractions as '95.1 ± 0.3' (percent), or '95.1' when std is NaN ('—': not run)."""
    if math.isnan(m):
        return "—"
    return f"{100 * m:.1f}" if math.isnan(s) else f"{100 * m:.1f} ± {100 * s:.1f}"


def aggregate(results):
    """Group runs by configuration (every training setting but the seed): mean +- std over seeds."""
    labels, groups = config_labels(results), {}
    for r in results:
        groups.setdefault(labels[recipe_key(r)], []).append(r)
    order = {a: i for i, a in enumerate(acts.ACTIVATIONS)}
    sg_order = {"none": 0, "attacker": 1, "optimizer": 2, "both": 3}
    rows = []
    for label, rs in sorted(groups.items(), key=lambda kv: (kv[1][0]["train_attack"] != "none", order.get(kv[1][0]["act"], 99), sg_order.get(kv[1][0]["smooth_grad"], 9))):
        r0 = rs[0]
        row = {"configuration": label, "seeds": len(rs), "eps": f"{r0['eps_px']:g}/255", "n_test": r0["n"]}
        for k in ("clean", "pgd200", "worst", "fgsm", "pgd200_sg", "apgd_ce", "apgd_dlr", "apgd_t", "square"):
            row[k] = mean_std([r.get(k, math.nan) for r in rs])
        paper = paper_numbers(r0["act"], r0["smooth_grad"]) if r0["train_attack"] != "none" else None
        row["paper_clean"], row["paper_pgd200"] = paper if paper else ("", "")
        kinds = {}   # which checks failed, on how many seeds (the numbers are in per_run.csv and the printout)
        for r in rs:
            for kind in {f.split(":")[0] for f in r["flags"]}:
                kinds[kind] = kinds.get(kind, 0) + 1
        row["flags"] = "; ".join(f"{k} ({n}/{len(rs)} seeds)" for k, n in sorted(kinds.items()))
        row["act"], row["smooth_grad"], row["train_attack"] = r0["act"], r0["smooth_grad"], r0["train_attack"]
        rows.append(row)
    return rows


def write_comparisons(heads, cells, out_dir, results_dir=None):
    """04's comparison table (heads, rows of strings) as comparisons.csv and comparisons.md (also into results_dir
    when given); returns the markdown."""
    for d in [out_dir] + ([results_dir] if results_dir else []):
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(out_dir, "comparisons.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(heads)
        w.writerows(cells)
    md = "\n".join(["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)] +
                   ["| " + " | ".join(c) + " |" for c in cells])
    with open(os.path.join(out_dir, "comparisons.md"), "w") as f:
        f.write(md + "\n")
    if results_dir:
        copy_results(out_dir, results_dir, names=("comparisons.md", "comparisons.csv"))
    return md


TABLE_COLS = [("configuration", "configuration"), ("seeds", "seeds"), ("clean", "clean %"),
              ("pgd200", "PGD-200 %"), ("worst", "worst-case %"), ("pgd200_sg", "PGD-200 smooth-backward %"), ("apgd_ce", "APGD-CE %"),
              ("apgd_dlr", "APGD-DLR %"), ("apgd_t", "APGD-T %"), ("square", "Square %"), ("paper_clean", "paper clean % (ImageNet)"),
              ("paper_pgd200", "paper PGD-200 % (ImageNet)"), ("flags", "masking flags")]


def write_tables(rows, out_dir):
    """results.csv and results.md, one row per configuration (aggregate's rows); returns the markdown."""
    def cell(row, k):
        v = row[k]
        return fmt(*v) if isinstance(v, tuple) else str(v) if v != "" else "—"
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([h for _, h in TABLE_COLS] + ["eps", "n_test"])
        for row in rows:
            w.writerow([cell(row, k) for k, _ in TABLE_COLS] + [row["eps"], row["n_test"]])
    lines = ["| " + " | ".join(h for _, h in TABLE_COLS) + " |", "|" + "---|" * len(TABLE_COLS)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, k) or "—" for k, _ in TABLE_COLS) + " |")
    md = "\n".join(lines)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(md + "\n")
    return md


def write_per_run(results, out_dir, pgd_steps):
    """per_run.csv: every number of every checkpoint, its masking flags and its attack parameters."""
    keys = ["run", "dataset", "model", "act", "smooth_grad", "train_attack", "seed", "eps_px", "n", "clean", "fgsm"] + \
           [f"pgd{k}" for k in pgd_steps] + ["pgd200_sg", "apgd_ce", "apgd_dlr", "apgd_t", "square", "autoattack", "worst", "flags",
                                                 "attack_parameters", "checkpoint", "epochs"]
    with open(os.path.join(out_dir, "per_run.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in results:
            w.writerow([("; ".join(r["flags"]) if k == "flags" else
                         " | ".join(f"{a}: {p}" for a, p in r["params"].items()) if k == "attack_parameters" else
                         r.get(k, "")) for k in keys])


def draw_figures(rows, results, out_dir, pgd_steps):
    """figure3_acc_vs_robust.png (ours beside the paper's), robust_vs_steps.png, robust_vs_eps.png; returns their paths."""
    import matplotlib.pyplot as plt
    paths = []
    # one colour per configuration, the same in both panels; circles = activations, squares = Table 1 rows
    colours = {name: plt.cm.tab10(i) for i, name in enumerate(list(PAPER_FIGURE3) + ["sg-attacker", "sg-optimizer", "sg-both"])}
    # Figure 3: clean vs robust for each activation, ours beside the paper's
    fig, (ax_o, ax_p) = plt.subplots(1, 2, figsize=(11, 4.5))
    for row in rows:
        if row["train_attack"] == "none":
            continue
        (c, cs), (rb, rs), (w, ws) = row["clean"], row["pgd200"], row["worst"]
        sg = row["smooth_grad"] != "none"
        key = f"sg-{row['smooth_grad']}" if sg else row["act"]
        label = row["act"] + (f" sg-{row['smooth_grad']}" if sg else "")
        err = lambda s: None if math.isnan(s) else 100 * s  # noqa: E731
        ax_o.errorbar(100 * c, 100 * rb, xerr=err(cs), yerr=err(rs), fmt="s" if sg else "o", color=colours.get(key),
                      capsize=3, label=label)
        ax_o.errorbar(100 * c, 100 * w, yerr=err(ws), fmt="s" if sg else "o", mfc="none", color=colours.get(key), capsize=2)
    for act, (c, rb) in PAPER_FIGURE3.items():
        ax_p.plot(c, rb, "o", color=colours[act], label=act)
    for mode, (c, rb) in PAPER_TABLE1.items():
        if mode != "none":
            ax_p.plot(c, rb, "s", color=colours[f"sg-{mode}"], label=f"relu sg-{mode}")
    ax_o.set(title="this repo: digits, mean ± std over seeds\nfilled: PGD-200, hollow: worst case over all attacks",
             xlabel="clean accuracy %", ylabel="robust accuracy %")
    ax_p.set(title="paper: ImageNet ResNet-50 (Table 1, Figure 3)", xlabel="clean accuracy %", ylabel="PGD-200 robust accuracy %")
    for ax in (ax_o, ax_p):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "figure3_acc_vs_robust.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    # robust accuracy against steps and against eps, seed 0 (or the lowest seed) of each configuration
    firsts, labels = {}, config_labels(results)
    for r in sorted(results, key=lambda r: r["seed"]):
        firsts.setdefault(labels[recipe_key(r)], r)
    for name, xlabel, getter in [("robust_vs_steps.png", "PGD steps (step max(eps/4, eps/k))",
                                  lambda r: (pgd_steps, [100 * r[f"pgd{k}"] for k in pgd_steps])),
                                 ("robust_vs_eps.png", "eps (pixel units /255), PGD-20",
                                  lambda r: ([float(e) for e in r["eps_curve"]], [100 * a for a in r["eps_curve"].values()]))]:
        fig, ax = plt.subplots(figsize=(9.5, 4.5))
        # 11+ lines: ten distinct colours, then the same colours dashed with another marker (no light/dark pairs)
        for i, (label, r) in enumerate(firsts.items()):
            xs, ys = getter(r)
            ax.plot(xs, ys, "o-" if i < 10 else "s--", ms=3, lw=1.2, color=plt.cm.tab10(i % 10), label=f"{label} s{r['seed']}")
        xs = sorted({x for r in firsts.values() for x in getter(r)[0]})
        ax.set(xscale="log", xlabel=xlabel, ylabel="robust accuracy %", ylim=(-2, 102))
        ax.set_xticks(xs, [f"{x:g}" if name == "robust_vs_steps.png" else f"{x:g}/255" for x in xs])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # outside: it hid the standard model's line
        fig.tight_layout()
        paths.append(os.path.join(out_dir, name))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths



PER_IMAGE_KEYS = ("clean", "pgd200", "worst")   # what the comparisons with ReLU resample (per_image.json)


def write_per_image(results, out_dir):
    """per_image.json: for every checkpoint its configuration and, per test image in order, '1' where the model
    was right ('0' where not) clean, under PGD-200 and in the worst case: what the paired bootstrap of the
    comparisons resamples (notebook 3 and notebook 6 read it from results/)."""
    runs = {r["run"]: {"recipe": r.get("recipe"), "label_fields": {k: r[k] for k in ("dataset", "act", "smooth_grad", "train_attack")},
                       "seed": r["seed"], "checkpoint": r.get("checkpoint", "final"), "eps_px": r["eps_px"], "n": r["n"],
                       **{k: r["per_image"][k] for k in PER_IMAGE_KEYS}}
            for r in results if "per_image" in r}
    with open(os.path.join(out_dir, "per_image.json"), "w") as f:
        json.dump(runs, f, indent=0, sort_keys=True)


def copy_results(out_dir, results_dir, names=("results.md", "results.csv", "per_run.csv", "per_image.json", "comparisons.md", "comparisons.csv")):
    """The small files a reader needs (tables, per-run and per-image results) copied to results_dir (in git)."""
    import shutil
    os.makedirs(results_dir, exist_ok=True)
    for name in names:
        if os.path.isfile(os.path.join(out_dir, name)):
            shutil.copyfile(os.path.join(out_dir, name), os.path.join(results_dir, name))


def report(results, comparison, out_dir, pgd_steps, margin, started, results_dir=None):
    """Every table and figure of a run of stage 04, and the summary printed after the per-checkpoint lines.
    comparison: 04's comparison table (heads, rows of strings), or None when nothing was compared with ReLU.
    results_dir: also copy the small files there (--results)."""
    rows = aggregate(results)
    md = write_tables(rows, out_dir)
    write_per_run(results, out_dir, pgd_steps)
    write_per_image(results, out_dir)
    figs = draw_figures(rows, results, out_dir, pgd_steps)
    print(f"\nresults by configuration (accuracies in %, mean ± std over seeds; eps and attack parameters in per_run.csv):\n{md}")
    if comparison:
        print(f"\neach configuration minus plain ReLU, in points, with a 95% bootstrap interval over seeds and test images "
              f"(paired: the same images); verdict: better / worse when the interval excludes 0, equal when it lies "
              f"within ±{100 * margin:g} points, else undecided; paper Δ: the paper's ImageNet difference:\n"
              f"{write_comparisons(*comparison, out_dir)}")
    if results_dir:
        copy_results(out_dir, results_dir)
    print(f"\nevaluated in {time.time() - started:.0f} s. Results table: {os.path.join(out_dir, 'results.md')} (and .csv, per_run.csv, "
          f"per_image.json)" + (f"; the tables and per-run / per-image results copied to {results_dir}" if results_dir else ""))
    print("Figures: " + ", ".join(figs))


def results_from_files(results_dir):
    """The results of a study from its small files in results/ (per_image.json and per_run.csv), in the form
    04's comparison and tables take: a committed study is compared again without its checkpoints or cache."""
    import csv
    with open(os.path.join(results_dir, "per_image.json")) as f:
        per_image = json.load(f)
    with open(os.path.join(results_dir, "per_run.csv"), newline="") as f:
        per_run = {row["run"] + ("@best" if row.get("checkpoint") == "best" and not row["run"].endswith("@best") else ""): row
                   for row in csv.DictReader(f)}
    results = []
    for run, r in sorted(per_image.items()):
        row = per_run.get(run, {})
        res = {k: float(v) for k, v in row.items() if k in ("clean", "fgsm", "pgd1", "pgd10", "pgd50", "pgd200", "pgd200_sg",
                                                            "apgd_ce", "apgd_dlr", "apgd_t", "square", "worst") and v != ""}
        res.update(r["label_fields"], run=run, recipe=r["recipe"], seed=r["seed"], eps_px=r["eps_px"], n=r["n"],
                   checkpoint=r.get("checkpoint", "final"), flags=[f for f in row.get("flags", "").split("; ") if f],
                   per_image={k: r[k] for k in PER_IMAGE_KEYS})
        results.append(res)
    return results
