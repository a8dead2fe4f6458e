"""Which attack of the reference AutoAttack finds what stage 04's worst case misses, on one digits checkpoint.

The reference AutoAttack (pyautoattack 0.2.0, standard version) runs its four attacks one at a time on the first
--limit digits test images at the checkpoint's own eps: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square
(5,000 queries). For each it prints its robust accuracy, the seconds it took, and the images it breaks that stage
04's worst case holds ("beyond 04"); then the same for the union of the four (AutoAttack itself) and for stage 04
with each one added. All attacks seeded with 0, one torch thread.

Run it (after `make run`, which trains the seed-0 checkpoints):
    python benchmarks/autoattack_gap.py runs/03_adv_train/digits_relu_sg-attacker_s0/final.pt
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
import sat_models  # noqa: E402

ev = importlib.import_module("04_eval")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a digits final.pt (stage 03)")
    p.add_argument("--limit", type=int, default=500, help="first N digits test images")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, ckpt = sat_models.model_from_checkpoint(args.checkpoint)
    cfg = ckpt["config"]
    x, y = sat_data.digits_tensors("test")
    x, y = x[:args.limit], y[:args.limit]
    eps, n = cfg["eps"] / 255, len(y)
    t = time.time()
    r = ev.evaluate_model(model, x, y, eps, cfg["num_classes"])
    worst = r["per_image"]["worst"]
    worst = torch.tensor([c == "1" for c in worst])
    print(f"{args.checkpoint}: eps {cfg['eps']:g}/255, {n} images; stage 04's worst case {100 * worst.float().mean():.1f}% "
          f"({time.time() - t:.0f} s)")
    from pyautoattack import AutoAttack
    aa = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=0, device="cpu")
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, cfg["num_classes"] - 1)
    aa.verbose = False
    union = ev.correct(model, x, y)
    print(f"{'attack':<12} {'robust %':>8} {'beyond 04':>9} {'04 with it %':>12} {'seconds':>7}")
    for name in aa.attacks_to_run:
        t = time.time()
        aa.attacks_to_run = [name]
        x_adv = aa.run_standard_evaluation(x, y, batch_size=n)[0]
        mask = ev.correct(model, x_adv, y)
        union &= mask
        print(f"{name:<12} {100 * mask.float().mean():>8.1f} {int((worst & ~mask).sum()):>9} "
              f"{100 * (worst & mask).float().mean():>12.1f} {time.time() - t:>7.0f}")
    print(f"{'AutoAttack':<12} {100 * union.float().mean():>8.1f} {int((worst & ~union).sum()):>9} "
          f"{100 * (worst & union).float().mean():>12.1f}")


if __name__ == "__main__":
    main()
