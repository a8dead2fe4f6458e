"""Stage 04's attack set against the reference AutoAttack, and what the adaptive attack adds, on the digits checkpoints.

For every checkpoint under --runs (default: the seed-0 runs `make run` leaves in runs/02_pgd and runs/03_adv_train),
on the first --limit digits test images at the checkpoint's own eps, prints robust accuracy in %:
  PGD-200      stage 04's PGD-200 (step eps/4, random start)
  PGD-sg       PGD-200 through the smooth backward (BPDA-style; ReLU models only)
  04 w/o sg    stage 04's worst case without the adaptive attack (FGSM, PGD-k, torchattacks' APGD-CE/DLR and
               Square at stage 04's defaults: 100 steps, 1,000 queries)
  04 worst     stage 04's worst case (the line above and PGD-sg): what results.md reports
  sg moves     04 worst minus 04 w/o sg, in points: what the adaptive attack moves the row by
  TA-AA        torchattacks' copy of AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square 5,000)
  ref AA       the reference AutoAttack (pyautoattack 0.2.0, the packaged fra31/auto-attack), standard version
  04 & ref AA  robust only if robust to both: how much the reference finds beyond stage 04's worst case
All attacks seeded with 0; one process per checkpoint, --jobs at a time, one torch thread each.

Run it:
    python benchmarks/autoattack_check.py               # 500 test images: ~10 min on 2 CPU cores
    python benchmarks/autoattack_check.py --limit 100   # a quicker look
"""
import argparse
import importlib
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import sat_data  # noqa: E402
import sat_files  # noqa: E402
import sat_models  # noqa: E402
import sat_processes  # noqa: E402
import sat_report  # noqa: E402
import sat_shards  # noqa: E402
import sat_smoke  # noqa: E402

ev = importlib.import_module("04_eval")


def check(job):
    """All three verdicts on one checkpoint: robust accuracy per attack set (fractions), and the seconds each took."""
    path, limit = job
    model, ckpt = sat_models.model_from_checkpoint(path)
    cfg = ckpt["config"]
    x, y = sat_data.digits_tensors("test")
    x, y = x[:limit], y[:limit]
    eps = cfg["eps"] / 255
    s = sat_smoke.smoke_settings("eval", {"apgd_steps": ev.APGD_STEPS, "square_queries": ev.SQUARE_QUERIES,
                                             "max_pgd_steps": None})
    t = time.time()
    r = ev.evaluate_model(model, x, y, eps, cfg["num_classes"], **s)
    t04 = time.time() - t
    m = {k: sat_shards.unbits(v) for k, v in r["per_image"].items()}
    # the worst case recomputed without PGD-sg: robust to every other attack
    others = [k for k in m if k not in ("clean", "worst", "pgd200_sg") and not k.startswith("eps_x")]
    worst_no_sg = m["clean"].clone()
    for k in others:
        worst_no_sg &= m[k]
    import torchattacks
    t = time.time()
    ta = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=cfg["num_classes"], seed=0)
    ta_mask = ev.correct(model, ta(x, y), y)
    t_ta = time.time() - t
    t = time.time()
    ref_mask = ev.correct(model, ev.reference_autoattack(model, eps, cfg["num_classes"], 0, "cpu")(x, y), y)
    t_ref = time.time() - t
    return {"run": os.path.basename(os.path.dirname(path)), "clean": r["clean"], "pgd200": r["pgd200"],
            "pgd_sg": r["pgd200_sg"], "w_no_sg": worst_no_sg.float().mean().item(), "worst": r["worst"],
            "ta_aa": ta_mask.float().mean().item(), "ref_aa": ref_mask.float().mean().item(),
            "both": (m["worst"] & ref_mask).float().mean().item(), "sec": (t04, t_ta, t_ref), "n": len(y)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=os.path.join(ROOT, "runs"), help="folder searched like stage 04's --runs")
    p.add_argument("--seed", type=int, default=0, help="the training seed of the checkpoints checked")
    p.add_argument("--limit", type=int, default=500, help="first N digits test images")
    p.add_argument("--jobs", type=int, default=2, help="checkpoints checked at once")
    args = p.parse_args(argv)
    args.limit = sat_smoke.smoke_settings("eval", {"limit": args.limit})["limit"]
    paths = [q for q in sat_report.find_checkpoints(args.runs)
             if sat_files.load_checkpoint(q)["config"]["dataset"] == "digits"
             and sat_files.load_checkpoint(q)["config"]["seed"] == args.seed]
    if not paths:
        raise SystemExit(f"no digits checkpoint of seed {args.seed} under {args.runs}: run python 02_pgd.py and python 03_adv_train.py")
    print(f"{len(paths)} digits checkpoints (seed {args.seed}), first {args.limit} test images, robust accuracy %")
    head = f"{'run':<28} {'clean':>6} {'PGD-200':>7} {'PGD-sg':>6} {'04 w/o sg':>9} {'04 worst':>8} {'sg moves':>8} " \
           f"{'TA-AA':>6} {'ref AA':>6} {'04 & ref AA':>11}   seconds (04, TA-AA, ref AA)"
    print(head)
    rows = [None] * len(paths)
    for i, r in sat_processes.in_processes(check, [(q, args.limit) for q in paths], min(args.jobs, len(paths))):
        rows[i] = r
    pct = sat_report.pct
    for r in rows:
        move = "—" if r["pgd_sg"] != r["pgd_sg"] else f"{100 * (r['worst'] - r['w_no_sg']):+.1f}"
        print(f"{r['run']:<28} {pct(r['clean']):>6} {pct(r['pgd200']):>7} {pct(r['pgd_sg']):>6} {pct(r['w_no_sg']):>9} "
              f"{pct(r['worst']):>8} {move:>8} {pct(r['ta_aa']):>6} {pct(r['ref_aa']):>6} {pct(r['both']):>11}   "
              + ", ".join(f"{s:.0f}" for s in r["sec"]))
    n = sum(r["n"] for r in rows)
    tot = [sum(r["sec"][j] for r in rows) for j in range(3)]
    print(f"per-image cost, one CPU thread: stage 04's set {1000 * tot[0] / n:.0f} ms, torchattacks' AutoAttack "
          f"{1000 * tot[1] / n:.0f} ms, reference AutoAttack {1000 * tot[2] / n:.0f} ms")


if __name__ == "__main__":
    main()
