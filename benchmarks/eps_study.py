"""Choosing a data set's eps: train ReLU and SiLU at several eps, evaluate each with PGD-50 (random start).

The default eps must leave robust accuracy neither near 0% nor near the clean accuracy, so that a
difference between activations can show. Run:
    python benchmarks/eps_study.py          # digits, eps 8..64/255 (~3 min on 2 CPU cores)
    python benchmarks/eps_study.py --dataset fashionmnist --data /usr/share/datasets/fashion-mnist \\
        --eps 12.75 25.5 51 --epochs 3 --limit 1000 --attack-steps 1   # short PGD-1 runs, first 1000 test
                                                                        # images (~8 min, 1 core)
"""
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import sat_cli  # noqa: E402
import sat_data  # noqa: E402
import sat_files  # noqa: E402
import sat_models  # noqa: E402

train_mod = importlib.import_module("03_adv_train")
attack = importlib.import_module("02_pgd")


def main(argv=None):
    p = sat_cli.ArgumentParser(description="eps study: ReLU and SiLU trained at several eps, PGD-50 robust accuracy")
    p.add_argument("--dataset", default="digits", help="digits | fashionmnist (any preset of stage 03)")
    p.add_argument("--data", default="data", help="data folder (fashionmnist: the one holding its 4 .gz files)")
    p.add_argument("--eps", type=sat_cli.pixels("--eps"), nargs="+", default=[8, 16, 32, 48, 64], help="pixel units (8 and 8/255 mean 8/255)")
    p.add_argument("--act", nargs="+", default=["relu", "silu"])
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's (milestones: the last epoch)")
    p.add_argument("--limit", type=int, default=0, help="first N test images only (0 = all)")
    p.add_argument("--attack-steps", type=int, default=None, help="PGD-k training (default: the preset's)")
    args = p.parse_args(argv)
    out = os.path.join(sat_files.RUNS_DIR, "eps_study" if args.dataset == "digits" else f"eps_study_{args.dataset}")
    # the preset, with shorter runs (--epochs) or another training attack (--attack-steps) if asked; each such
    # variant trains into folders of its own (suffix), so that it never overwrites the preset's runs
    overrides, suffix = {}, ""
    if args.epochs:
        overrides.update(epochs=args.epochs, milestones=[args.epochs - 1] if args.epochs > 1 else [])
        suffix += f"_e{args.epochs}"
    if args.attack_steps is not None:
        overrides["attack_steps"] = args.attack_steps
        suffix += f"_k{args.attack_steps}"
    train_mod.preset_config(args.dataset, **overrides)   # bad settings: one error line before any work
    x, y = sat_data.get_dataset(args.dataset, "test", args.data).tensors   # digits, fashionmnist: in-memory tensors
    x, y = (x[:args.limit], y[:args.limit]) if args.limit else (x, y)
    print(f"{'eps/255':>7} {'act':>6} {'clean':>7} {'PGD-50':>7} {'train s':>8}   ({len(y)} test images)")
    for eps_px in args.eps:
        for act in args.act:
            cfg = train_mod.preset_config(args.dataset, act=act, eps=float(eps_px), data=args.data, **overrides,
                                          out=os.path.join(out, f"eps{eps_px:g}_{act}{suffix}"))
            path = train_mod.train(cfg, quiet=True)
            model, ckpt = sat_models.model_from_checkpoint(path)
            eps = attack.px(eps_px)
            with torch.no_grad():
                clean = (model(x).argmax(1) == y).float().mean().item()
            torch.manual_seed(0)
            rob = (attack.pgd_eval(model, x, y, eps, attack.default_step(eps, 50), 50) == -1).float().mean().item()
            secs = sum(r["seconds"] for r in ckpt["metrics"]["history"])
            print(f"{eps_px:>7g} {act:>6} {100 * clean:>6.1f}% {100 * rob:>6.1f}% {secs:>8.0f}", flush=True)


if __name__ == "__main__":
    sat_cli.run_cli(main)
