"""Direct comparisons among activations of one study (not each against ReLU): is one smooth activation better
than another? Worst-case robust accuracy, the seed-paired seed × image bootstrap of stage 04, its verdict rule,
Holm over the pairs asked.

    python tools/pairwise.py results/digits_eps32 silu gelu elu psoftplus
"""
import importlib
import itertools
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import numpy as np  # noqa: E402

import sat_report  # noqa: E402
import sat_stats  # noqa: E402

ev = importlib.import_module("04_eval")


def main(folder, activations):
    by = {}
    for r in sat_report.results_from_files(folder):
        if r["train_attack"] != "none" and r["smooth_grad"] == "none" and r.get("checkpoint", "final") == "final":
            by.setdefault(r["act"], []).append(r)
    missing = [a for a in activations if a not in by]
    if missing:
        sys.exit(f"error: {folder} has no runs of {', '.join(missing)}; it has {', '.join(sorted(by))}")

    def grid(rs):   # (seeds, images), in seed order: the same seed on both sides of a pair (paired)
        return np.array([[c == "1" for c in r["per_image"]["worst"]] for r in sorted(rs, key=lambda r: r["seed"])])

    family = []
    for a, b in itertools.combinations(activations, 2):
        d, reps = ev.bootstrap_diff(grid(by[a]), grid(by[b]), paired=True, replicates=True)
        family.append({"pair": f"{a} - {b}", "worst": (d, *sat_stats.judge(reps, ev.MARGIN, ev.verdict))})
    sat_stats.with_holm(family, ["worst"])
    print(f"{folder}: worst case, first minus second, points [95% CI], verdict, after Holm over {len(family)} pairs")
    for f in family:
        d, lo, hi, v, mc, p, h = f["worst"]
        print(f"{f['pair']:<22} {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]  {v:<9} after Holm: {h}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: python tools/pairwise.py results/<study> ACT ACT [ACT ...]")
    main(sys.argv[1], sys.argv[2:])
