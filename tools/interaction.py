"""How much a change of recipe moves an activation's difference from ReLU: (act − ReLU) in study B minus
(act − ReLU) in study A, worst case, with a 95% bootstrap interval over seeds and test images. Both studies must
hold the same seeds and test images (the 2×2 study: PGD-1 and PGD-10 training at one ε); the four arms are
resampled with one draw of seeds and one of images per replicate (seed i has the same initial weights and data
order in every arm). Verdict rule and Holm over the activations asked, as in stage 04.

    python tools/interaction.py results/digits_eps64 results/digits_eps64_pgd10 silu gelu psoftplus
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import importlib  # noqa: E402

import numpy as np  # noqa: E402

import sat_report  # noqa: E402
import sat_stats  # noqa: E402

ev = importlib.import_module("04_eval")
REPS = ev.BOOTSTRAP


def arms(folder):
    """{act or 'relu/attacker': {seed: 0/1 worst-case vector}} of a study's final checkpoints."""
    out = {}
    for r in sat_report.results_from_files(folder):
        if r["train_attack"] != "none" and r.get("checkpoint", "final") == "final":
            name = r["act"] + ("" if r["smooth_grad"] == "none" else f"/{r['smooth_grad']}")
            out.setdefault(name, {})[r["seed"]] = np.array([c == "1" for c in r["per_image"]["worst"]], np.float32)
    return out


def main(a_dir, b_dir, names, seed=0):
    a, b = arms(a_dir), arms(b_dir)
    family = []
    for name in names:
        seeds = sorted(set(a["relu"]) & set(a[name]) & set(b["relu"]) & set(b[name]))
        b_act, b_relu, a_act, a_relu = (np.stack([arm[s] for s in seeds]) for arm in (b[name], b["relu"], a[name], a["relu"]))
        # (b_act - b_relu) - (a_act - a_relu) = (b_act + a_relu) - (b_relu + a_act), per seed and image: 04's paired
        # bootstrap on those two sums draws the seeds and images once for all four arms
        d, reps = ev.bootstrap_diff(b_act + a_relu, b_relu + a_act, reps=REPS, seed=seed, paired=True, replicates=True)
        family.append({"name": name, "seeds": len(seeds), "worst": (d, *sat_stats.judge(reps, ev.MARGIN, ev.verdict))})
    sat_stats.with_holm(family, ["worst"])
    print(f"(act - relu) in {b_dir} minus (act - relu) in {a_dir}, worst case, points [95% CI], Holm over {len(family)}")
    for f in family:
        d, lo, hi, v, mc, p, h = f["worst"]
        print(f"{f['name']:<16} {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]  {v:<9} after Holm: {h}  ({f['seeds']} seeds)")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: python tools/interaction.py results/<study A> results/<study B> ACT [ACT ...]")
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
