"""Speed of stage 02's attack: what one PGD step costs, and what early stopping saves in evaluation.

Measures, on the CPU (2 threads):
  a. seconds per step of (i) one full training step, (ii) one step of our pgd(), (iii) one step of
     torchattacks.PGD, for a CIFAR ResNet-18 (batch 64, random 32x32 inputs) and for the digits model
     (batch 64). Prints PGD step / training step (target <= 0.66) and ours / torchattacks (target <= 1.0).
  b. PGD-200 evaluation of an adversarially trained digits model on the 500 test images: our pgd_eval()
     (broken examples leave the batch) vs torchattacks.PGD (all 200 steps for every image), at the model's
     training eps and at 1.125x and 1.25x that eps. Prints both times, the speed-up (target >= 2x), the 'ideal'
     speed-up early stopping alone allows (all example-iterates / the ones pgd_eval runs; with robust
     accuracy r it cannot exceed ~1/r) and both robust accuracies from the SAME random starts (ours must
     not be higher: counting ANY fooling iterate, not just the last, can only lower it).

Every ratio is measured within one run: the compared variants alternate, repeat after repeat, and the
printed ratio is the median of the per-repeat ratios, so load on the machine hits both sides alike.

Run it (from anywhere):
    python benchmarks/bench_pgd.py           # ~2 min on 2 CPU cores (+15 s the first time: trains a model)
    python benchmarks/bench_pgd.py --quick   # fewer repeats, ~1 min
Other processes on the same 2 cores can stretch these times several-fold (2 threads each wait on the
other) and widen the 'repeats lo..hi' spread printed next to each ratio: trust a ratio with a tight spread.
"""
import argparse
import contextlib
import importlib
import io
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchattacks  # noqa: E402

import sat_data  # noqa: E402
import sat_files  # noqa: E402
import sat_models  # noqa: E402
import sat_smoke  # noqa: E402
from timing import interleaved, ratio, spread  # noqa: E402

attack = importlib.import_module("02_pgd")
train_mod = importlib.import_module("03_adv_train")


def verdict(ok):
    return "met" if ok else "NOT met"


# ----------------------------------------------------------------------------------------------------
# a. One PGD step vs one training step
#
# Why is a PGD step ~2/3 of a training step? Count a forward pass as 1 unit. Backward through a conv or
# linear layer does two matrix products of about the forward's size: the gradient w.r.t. its INPUT (to keep
# going down the network) and the gradient w.r.t. its WEIGHTS (for the optimizer). So
#     training step = forward 1 + input grads 1 + weight grads 1 (+ the SGD update)  ~ 3 units
#     PGD step      = forward 1 + input grads 1                                      ~ 2 units
# pgd() asks torch.autograd.grad(loss, delta) for the gradient w.r.t. the perturbation only; autograd then
# tells every conv backward that no weight gradient is wanted and skips those kernels (and the SGD update).
# It also runs BatchNorm in eval mode (no batch statistics to compute). Against that, the attack pays for
# the first conv's input gradient, which training never needs. Net: ~0.64x on a ResNet-18.

def step_timings(name, model, x, y, eps, repeats, inner):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)   # tiny lr: the weights barely move
    ta = torchattacks.PGD(model, eps=eps, alpha=eps, steps=1, random_start=False)

    def train_step():
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fns = {"train step": train_step,
           "our PGD step": lambda: attack.pgd(model, x, y, eps, eps, steps=1, rand_start_prob=0.0),
           "torchattacks step": lambda: ta(x, y)}
    times = interleaved(fns, repeats, inner)
    print(f"\n{name}: batch {len(y)}, median of {repeats} repeats x {inner} call(s)")
    for k, v in times.items():
        print(f"  {k:<18} {statistics.median(v) * 1e3:8.2f} ms")
    r1, r2 = ratio(times, "our PGD step", "train step"), ratio(times, "our PGD step", "torchattacks step")
    print(f"  PGD step / training step  {r1:6.3f}   (target <= 0.66: {verdict(r1 <= 0.66)}; {spread(times, 'our PGD step', 'train step')})")
    print(f"  ours / torchattacks       {r2:6.3f}   (target <= 1.00: {verdict(r2 <= 1.0)}; {spread(times, 'our PGD step', 'torchattacks step')})")


# ----------------------------------------------------------------------------------------------------
# b. PGD-200 evaluation: early stopping vs running every image for all 200 steps

def adversarially_trained_digits_model():
    path = os.path.join(ROOT, sat_files.RUNS_DIR, "03_adv_train", "digits_relu_s0", "final.pt")
    if not os.path.isfile(path):
        out = os.path.join(ROOT, sat_files.RUNS_DIR, "bench", "digits_relu_adv")
        print(f"no {os.path.relpath(path, ROOT)}; training (or reusing) {os.path.relpath(out, ROOT)} ...", flush=True)
        with contextlib.redirect_stdout(io.StringIO()):   # train() prints its epoch table even when quiet
            path = train_mod.train(train_mod.preset_config("digits", act="relu", out=out), quiet=True)
    model, ckpt = sat_models.model_from_checkpoint(path)
    print(f"model: {os.path.relpath(path, ROOT)} (trained at eps {ckpt['config']['eps']:g}/255)")
    return model, ckpt


def eval_timings(model, x, y, eps_px, repeats, steps=200):
    eps = attack.px(eps_px)
    ta = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    acc, broken = {"ours": [], "theirs": []}, []

    # Same random starts on both sides, so "ours <= theirs" is a check, not a coin toss: call i of each
    # side seeds with i; pgd_eval draws one coin (torch.rand(())) and then uniform(-eps, eps) for the whole
    # batch, torchattacks draws the same uniform tensor, so we burn the coin before calling it.
    def ours():
        torch.manual_seed(len(acc["ours"]))
        broken.append(attack.pgd_eval(model, x, y, eps, eps / 4, steps))
        acc["ours"].append((broken[-1] == -1).float().mean().item())

    def theirs():
        torch.manual_seed(len(acc["theirs"]))
        torch.rand(())
        x_adv = ta(x, y)
        with torch.no_grad():
            acc["theirs"].append((model(x_adv).argmax(1) == y).float().mean().item())

    times = interleaved({"ours": ours, "theirs": theirs}, repeats, inner=1, warmup=1)
    t_ours, t_theirs = statistics.median(times["ours"]), statistics.median(times["theirs"])
    speedup = ratio(times, "theirs", "ours")
    # Ideal speed-up from early stopping alone: example-iterates of the full loop / those pgd_eval runs
    # (example i is still in the batch at iterate t iff it is robust or broken_at >= t).
    b = broken[0]
    work = sum(((b == -1) | (b >= t)).sum().item() for t in range(steps + 1))
    ideal = (steps + 1) * len(y) / work
    a_ours, a_theirs = statistics.mean(acc["ours"]), statistics.mean(acc["theirs"])   # incl. warm-up runs
    print(f"{eps_px:>7g} {t_ours:>9.2f} {t_theirs:>9.2f} {speedup:>7.2f}x {ideal:>6.2f}x {100 * a_ours:>8.2f}% {100 * a_theirs:>9.2f}%"
          f"   speed-up >= 2x: {verdict(speedup >= 2)}; ours <= theirs: {verdict(a_ours <= a_theirs)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats (~1 min)")
    args = p.parse_args()
    # SAT_SMOKE=1 (the README command test): one thread, 8-image batches, 16 test images, PGD-3; figures meaningless
    size = sat_smoke.smoke_settings("benchmark", {"threads": 2, "batch": 64, "images": 500, "steps": 200})
    torch.set_num_threads(size["threads"])
    torch.manual_seed(0)
    reps = 3 if args.quick else 7
    b = size["batch"]

    print("a. one PGD step vs one training step (CPU, 2 threads)")
    resnet = torch.nn.Sequential(sat_models.Normalize((0.5,) * 3, (0.25,) * 3), sat_models.cifar_resnet18())
    x, y = torch.rand(b, 3, 32, 32), torch.randint(0, 10, (b,))
    step_timings("CIFAR ResNet-18, eps 8/255", resnet, x, y, attack.px(8), reps, inner=1)

    digits = torch.nn.Sequential(sat_models.Normalize((0.3,), (0.4,)), sat_models.DigitsNet(16))
    x, y = sat_data.digits_tensors("train")
    step_timings("DigitsNet(16), eps 64/255", digits, x[:b], y[:b], attack.px(64), reps, inner=50)

    print("\nb. PGD-200 evaluation, step eps/4, random start, 500 digits test images")
    model, ckpt = adversarially_trained_digits_model()
    x, y = (t[:size["images"]] for t in sat_data.digits_tensors("test"))
    print(f"{'eps/255':>7} {'ours (s)':>9} {'theirs(s)':>9} {'speedup':>8} {'ideal':>7} {'our acc':>9} {'their acc':>10}")
    train_eps = float(ckpt["config"]["eps"])
    for eps_px in (train_eps, 1.125 * train_eps, 1.25 * train_eps):   # robust accuracy ~50%, ~25%, ~7%
        eval_timings(model, x, y, eps_px, repeats=2 if args.quick else 3, steps=size["steps"])


if __name__ == "__main__":
    main()
