"""Speed of stage 03's training: what PGD-1 adversarial training costs over standard training, on the CPU.

Measures (2 threads):
  1. seconds per call of adversarial_training_step with steps=1 (PGD-1, the paper's recipe) and with
     steps=0 (standard training), same model, same batch of 64: the digits model and a CIFAR ResNet-18
     (random 32x32 inputs). Prints the ratio adversarial / standard (target <= 1.70).
     Why ~1.65: a PGD-1 step is a forward plus an input-only backward, ~0.64 of a training step (see
     bench_pgd.py: no weight gradients, no optimizer update), and the adversarial step is one of those
     plus the ordinary training step on x_adv.
  2. wall-clock seconds of the default digits training (30 epochs, PGD-1, eps 64/255) of one configuration,
     for act = relu and silu, written to a temporary folder (runs/03_adv_train is never touched).
  3. (--compile, this part alone) the PGD-1 step of a torch.compile'd CIFAR ResNet-18 (batch 64), with pgd()
     switching the weights' requires_grad off during the attack, as it does, against the weights left on, and
     the eager step. Why: eager autograd skips the weight gradients that autograd.grad(loss, delta) does not
     ask for; with torch 2.14.1 a compiled backward computed them (0.81x with them off), with 2.11 it did not.

Ratios are measured within one run: the two variants alternate, repeat after repeat, and the printed
ratio is the median of the per-repeat ratios, so load on the machine hits both sides alike.

Run it (from anywhere):
    python benchmarks/bench_train.py           # ~1.5 min on 2 idle CPU cores
    python benchmarks/bench_train.py --quick   # fewer repeats, 5-epoch trainings: ~25 s
    python benchmarks/bench_train.py --compile # part 3 only: ~1.5 min (compiling takes most of it)
Other processes on the same 2 cores can stretch these times several-fold and widen the 'repeats lo..hi'
spread printed next to each ratio: trust a ratio with a tight spread.
"""
import argparse
import contextlib
import dataclasses
import importlib
import io
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import sat_data  # noqa: E402
import sat_models  # noqa: E402
import sat_smoke  # noqa: E402
from timing import interleaved, ratio, spread  # noqa: E402

attack = importlib.import_module("02_pgd")
train_mod = importlib.import_module("03_adv_train")


def step_ratio(title, cfg, x, y, repeats, inner):
    """Time adversarial_training_step with steps=1 vs steps=0 on the stage's own model and optimizer."""
    model = sat_models.build_model(dataclasses.asdict(cfg))   # Sequential(Normalize, net), as train() builds it
    opt = train_mod.make_optimizer(model, cfg)
    eps = attack.px(cfg.eps)
    step = attack.default_step(eps, 1)                     # = eps for PGD-1

    def run(steps):
        return lambda: train_mod.adversarial_training_step(model, x, y, opt, eps, step, steps, cfg.rand_start_prob)

    times = interleaved({"PGD-1 adversarial": run(1), "standard": run(0)}, repeats, inner)
    r = ratio(times, "PGD-1 adversarial", "standard")
    print(f"\n{title}: batch {len(y)}, eps {cfg.eps:g}/255, median of {repeats} repeats x {inner} call(s)")
    for k, v in times.items():
        print(f"  {k:<18} {statistics.median(v) * 1e3:8.2f} ms/step")
    print(f"  adversarial / standard  {r:6.3f}   (target <= 1.70: {'met' if r <= 1.70 else 'NOT met'}; {spread(times, 'PGD-1 adversarial', 'standard')})")


class WeightsLeftOn(torch.nn.Module):
    """`model` with its weights hidden from pgd() (parameters() is empty here), so they keep requires_grad during
    the attack: the attack as it ran before pgd() switched them off."""

    def __init__(self, model):
        super().__init__()
        object.__setattr__(self, "inner", model)   # not registered as a submodule
        self.training = model.training

    def forward(self, x):
        return self.inner(x)

    def train(self, mode=True):
        self.training = mode
        self.inner.train(mode)
        return self


def compiled_step(cfg, x, y, repeats, inner):
    """Part 3: the compiled PGD-1 step with the attack's weights off (pgd() as it is) and left on, and eager."""
    backend = "eager" if sat_smoke.SMOKE else "inductor"   # SAT_SMOKE: traced only, no kernels compiled
    model = sat_models.build_model(dataclasses.asdict(cfg))
    opt = train_mod.make_optimizer(model, cfg)
    compiled = torch.compile(model, backend=backend)
    eps = attack.px(cfg.eps)

    def run(fwd, attacker):
        return lambda: train_mod.adversarial_training_step(fwd, x, y, opt, eps, eps, 1, cfg.rand_start_prob,
                                                           attack_model=attacker)
    fns = {"compiled, weights off": run(compiled, compiled), "compiled, weights on": run(compiled, WeightsLeftOn(compiled)),
           "eager": run(model, model)}
    t = time.perf_counter()
    for fn in fns.values():
        fn()
    print(f"\nCIFAR ResNet-18 (relu), torch.compile backend {backend}: batch {len(y)}, first calls {time.perf_counter() - t:.0f} s "
          f"(compiling), median of {repeats} repeats x {inner} call(s)")
    times = interleaved(fns, repeats, inner)
    for k, v in times.items():
        print(f"  {k:<22} {statistics.median(v) * 1e3:8.2f} ms/step")
    for a, b in (("compiled, weights off", "compiled, weights on"), ("compiled, weights off", "eager")):
        print(f"  {a} / {b:<20} {ratio(times, a, b):6.3f}   ({spread(times, a, b)})")


def time_training(act, epochs):
    """Seconds of one digits training run (the preset; `epochs` overrides only in --quick) in a temp folder."""
    overrides = {} if epochs is None else {"epochs": epochs}
    with tempfile.TemporaryDirectory() as out:
        cfg = train_mod.preset_config("digits", act=act, out=out, **overrides)
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):   # train() prints its epoch table even when quiet
            train_mod.train(cfg, quiet=True)
        return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and 5-epoch trainings")
    p.add_argument("--compile", action="store_true", help="part 3 alone: the compiled step, the attack's weights off or on")
    args = p.parse_args()
    # SAT_SMOKE=1 (the README command test): one thread, 8-image batches; the figures mean nothing then
    size = sat_smoke.smoke_settings("benchmark", {"threads": 2, "batch": 64})
    torch.set_num_threads(size["threads"])
    torch.manual_seed(0)
    b = size["batch"]
    if args.compile:
        print("3. the PGD-1 adversarial training step of a compiled model (CPU, 2 threads)")
        x, y = torch.rand(b, 3, 32, 32), torch.randint(0, 10, (b,))
        compiled_step(train_mod.preset_config("cifar10"), x, y, repeats=5, inner=1)
        return

    print("1. one PGD-1 adversarial training step vs one standard training step (CPU, 2 threads)")
    x, y = sat_data.digits_tensors("train")
    step_ratio("digits model (DigitsNet 16, relu)", train_mod.preset_config("digits"), x[:b], y[:b],
               repeats=3 if args.quick else 7, inner=20 if args.quick else 50)
    x, y = torch.rand(b, 3, 32, 32), torch.randint(0, 10, (b,))
    step_ratio("CIFAR ResNet-18 (relu)", train_mod.preset_config("cifar10"), x, y,
               repeats=2 if args.quick else 5, inner=1)

    epochs = 5 if args.quick else None
    rounds = 1 if args.quick else 2
    print(f"\n2. default digits training of one configuration"
          f"{' (--quick: 5 epochs instead of 30)' if args.quick else ''}, median of {rounds} run(s)")
    secs = {"relu": [], "silu": []}
    for _ in range(rounds):          # relu, silu, relu, silu: interleaved like the step timings
        for act in secs:
            secs[act].append(time_training(act, epochs))
    for act, s in secs.items():
        print(f"  act={act:<5} {statistics.median(s):6.1f} s per configuration   (runs: {', '.join(f'{v:.1f}' for v in s)})")


if __name__ == "__main__":
    main()
