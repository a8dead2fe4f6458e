"""Choosing the digits eps: train ReLU and SiLU at several eps, evaluate each with PGD-50 (random start).

The digits default eps must leave robust accuracy neither near 0% nor near the clean accuracy, so that a
difference between activations can show. Run: python benchmarks/eps_study.py   (~3 min on 2 CPU cores)
"""
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import common  # noqa: E402

train_mod = importlib.import_module("03_adv_train")
attack = importlib.import_module("02_pgd")

OUT = os.path.join(common.RUNS_DIR, "eps_study")
x, y = common.digits_tensors("test")
print(f"{'eps/255':>7} {'act':>6} {'clean':>7} {'PGD-50':>7}")
for eps_px in [8, 16, 32, 48, 64]:
    for act in ["relu", "silu"]:
        cfg = train_mod.preset_config("digits", act=act, eps=float(eps_px), out=os.path.join(OUT, f"eps{eps_px}_{act}"))
        path = train_mod.train(cfg, quiet=True)
        model, _ = common.model_from_checkpoint(path)
        eps = attack.px(eps_px)
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).float().mean().item()
        torch.manual_seed(0)
        rob = (attack.pgd_eval(model, x, y, eps, attack.default_step(eps, 50), 50) == -1).float().mean().item()
        print(f"{eps_px:>7} {act:>6} {100 * clean:>6.1f}% {100 * rob:>6.1f}%", flush=True)
