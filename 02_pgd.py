"""Stage 02: the L-infinity PGD attacker. PGD-1 crafts the training examples, PGD-200 evaluates.
Measured: at eps 64/255 the standard digits model falls from 99.0% to 2.6% (FGSM), 0.0% (PGD-200) (python 02_pgd.py).

Paper: arXiv:2006.14536, Section 2 (the inner maximisation of adversarial training) and its protocol:
  training attacker   PGD-1, eps = 4/255, step = eps, random start (the released code: a uniform point in
                      the eps-ball for 80% of batches, the clean image for 20%)
  evaluation attacker PGD-200, eps = 4/255, step = 1/255 (= eps/4), random start
Madry et al.'s projected gradient ascent on the loss, for pixels x in [0, 1]:

    x_0     = x + U(-eps, eps)                     (random start; x itself without one)
    x_{t+1} = Proj_{ ||x' - x||_inf <= eps, x' in [0,1] } ( x_t + step * sign(grad_x L(f(x_t), y)) )

FGSM is PGD-1 with step = eps and no random start.

This file holds the ONE implementation of the attack that stage 03, stage 04 and the notebooks import:
  pgd(...)        the attack; returns adversarial images. Needs nothing but torch: copy it freely.
  pgd_eval(...)   the same iterates, for evaluation: an example counts as broken as soon as ANY iterate
                  fools the model, and broken examples stop costing compute (early stopping). Never reports
                  a higher robust accuracy than pgd() on the same inputs and random starts.
  check_pixels(x) refuses inputs outside [0, 1] (normalised images): once, where data enters, since it reads
                  the tensor (a GPU sync that pgd() itself does not pay on every training step).

Run it:
    python 02_pgd.py        # CPU, ~9 s (2 cores): trains (or reuses) a standard digits model, attacks it
    python 02_pgd.py --eps 8 --steps 1 2 5 10    # other budgets; eps and steps in pixel units (8 = 8/255)
Writes:
    runs/02_pgd/digits_standard/final.pt      the standard (non-adversarial) model, read by stage 04
    runs/02_pgd/attack_table.txt              robust accuracy under FGSM and PGD-k
    runs/02_pgd/adversarial_examples.png      clean / perturbation / adversarial, with predictions
Speed figures (PGD step vs training step, vs torchattacks): python benchmarks/bench_pgd.py
"""
import importlib
import os
import time

import torch
import torch.nn.functional as F

import sat_data
import sat_models
# Settings (pixel units: 4 means 4/255; converted to [0, 1] units by `px` and nowhere else)
import sat_cli
# default eps per data set (see README for digits; Fashion-MNIST: 0.1 = 25.5/255, the literature's usual choice)
import sat_files
import sat_processes
EPS_PX = {"digits": 64.0, "cifar10": 8.0, "fashionmnist": 25.5, "imagenet": 4.0}
STEPS = [1, 2, 5, 10, 20, 50, 100, 200]                      # PGD-k budgets printed by main()
OUT_DIR = os.path.join(sat_files.RUNS_DIR, "02_pgd")


def px(value_in_pixels: float) -> float:
    """Pixel units (0..255) -> [0, 1] units. The one place where '--eps 4' becomes 4/255."""
    return float(value_in_pixels) / 255.0


def default_step(eps: float, steps: int) -> float:
    """Step size for PGD-k: max(eps/4, eps/k). k=1 gives eps (the paper's training PGD-1); k=200 gives eps/4
    (the paper's evaluation, 1/255 at eps 4/255); in between, the released code's rule max(step, eps/k)
    keeps a short attack able to reach the boundary of the ball."""
    return max(eps / 4.0, eps / steps)


# ----------------------------------------------------------------------------------------------------
# The attack

def pgd(model, x, y, eps, step, steps, rand_start_prob=1.0):
    """Untargeted L-inf PGD. x: (B, ...) pixels in [0, 1]; y: (B,) labels. eps, step in [0, 1] units.

    rand_start_prob: 1.0 = always start from a uniform random point in the ball (paper's evaluation);
    0.8 = the paper's training code (80% of batches random, 20% clean); 0.0 = start at x (FGSM when steps=1).
    Returns x_adv (B, ...), detached, with ||x_adv - x||_inf <= eps and x_adv in [0, 1].

    What it does NOT do, on purpose:
      * no weight gradients: torch.autograd.grad w.r.t. delta only, so nothing lands in any param.grad
        and the backward pass skips the weight-gradient kernels (a PGD step is cheaper than a training step).
        A compiled backward (torch.compile) may compute every gradient its inputs require, so the weights'
        requires_grad is switched off for the attack (and back on after it): with torch 2.14.1 a compiled
        ResNet-18 step takes 0.81x the time it took with them on (benchmarks/bench_train.py --compile);
      * no BatchNorm statistics updates: the model runs in eval mode (paper: "BatchNorm statistics are not
        updated while the adversarial example is generated"); its train/eval mode is restored on exit;
      * no check that x lies in [0, 1]: that reads the tensor (a GPU-to-host sync on every call), so it is
        done once where the data enters (check_pixels below).
    Under torch.autocast the forward runs in low precision; delta, its gradient and the loss stay float32.
    """
    # checks on plain numbers cost nothing (no tensor is read); eps = 4 instead of px(4) would attack every pixel
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0 (in [0, 1] units), got {eps}")
    if not step > 0:
        raise ValueError(f"step must be > 0 (in [0, 1] units), got {step}")
    if eps > 1 or step > 1:
        raise ValueError(f"eps and step are in [0, 1] units: use px(4) for 4/255; got eps={eps}, step={step}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    was_training = model.training
    model.eval()
    weights = [p for p in model.parameters() if p.requires_grad]
    for p in weights:   # eager autograd skips their gradients anyway; a compiled backward would not (see above)
        p.requires_grad_(False)
    try:
        # the random start: one coin for the whole batch, as in the released code (a number drawn on the CPU,
        # so .item() waits for no GPU), then delta_0 uniform in [-eps, eps], cut so that x + delta_0 is in [0, 1]
        delta = torch.zeros_like(x)
        if rand_start_prob > 0 and torch.rand(()).item() < rand_start_prob:
            delta.uniform_(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(int(steps)):
            delta.requires_grad_(True)
            # sum, not mean: each example's gradient is its own (no 1/B shrink that could underflow in fp16)
            loss = F.cross_entropy(model(x + delta).float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)   # ascent step, project on the ball
            delta = (x + delta).clamp(0, 1) - x                               # ... and on the image box
        return (x + delta).detach()
    finally:
        model.train(was_training)
        for p in weights:
            p.requires_grad_(True)


def pgd_eval(model, x, y, eps, step, steps, rand_start_prob=1.0, delta0=None):
    """Evaluation PGD with early stopping. Same iterates as pgd() (same start, same steps), but example i
    counts as broken at the first iterate t (0 = the start, ..., steps) at which the model misclassifies it,
    and from then on it leaves the batch: PGD-200 on a model with 40% robust accuracy costs ~40% of a plain
    loop. Counting ANY iterate (not just the last) can only lower robust accuracy, never raise it.

    Returns broken_at: (B,) long, the first fooling iterate, or -1 where no iterate fooled the model.
    Robust accuracy = (broken_at == -1).float().mean(); robust accuracy at a budget of k <= steps steps with
    the same step size = ((broken_at == -1) | (broken_at > k)).float().mean().
    delta0: the random start to use, (B, ...) in [-eps, eps] (stage 04 draws each image's own, so that the
    batch an image falls in changes nothing); None draws it here as pgd() does.
    """
    if not eps >= 0:   # the same checks as pgd's
        raise ValueError(f"eps must be >= 0 (in [0, 1] units), got {eps}")
    if not step > 0:
        raise ValueError(f"step must be > 0 (in [0, 1] units), got {step}")
    if eps > 1 or step > 1:
        raise ValueError(f"eps and step are in [0, 1] units: use px(4) for 4/255; got eps={eps}, step={step}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    was_training = model.training
    model.eval()
    try:
        broken_at = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        idx = torch.arange(x.shape[0], device=x.device)   # which examples are still in the batch
        da = torch.zeros_like(x)                          # pgd's random start, the same draws
        if delta0 is not None:                            # or the caller's (stage 04: one per image)
            da = delta0.detach().clone()
        elif rand_start_prob > 0 and torch.rand(()).item() < rand_start_prob:
            da.uniform_(-eps, eps)
        xa, ya, da = x, y, (x + da).clamp(0, 1) - x
        for t in range(int(steps) + 1):
            da.requires_grad_(t < steps)
            with torch.set_grad_enabled(t < steps):
                logits = model(xa + da)
            fooled = logits.argmax(1) != ya
            if t == steps:
                broken_at[idx[fooled]] = t
                break
            loss = F.cross_entropy(logits.float(), ya, reduction="sum")
            (grad,) = torch.autograd.grad(loss, da)
            da = (da.detach() + step * grad.sign()).clamp(-eps, eps)
            da = (xa + da).clamp(0, 1) - xa
            if fooled.any():    # shrink the batch only when someone was fooled: indexing costs time too
                broken_at[idx[fooled]] = t
                keep = ~fooled
                xa, ya, da, idx = xa[keep], ya[keep], da[keep], idx[keep]
                if idx.numel() == 0:
                    break
        return broken_at
    finally:
        model.train(was_training)


def check_pixels(x):
    """x itself, or ValueError unless every value lies in [0, 1]: the attacks take pixels (normalisation is
    the model's first layer, so eps is one number for every channel). It reads the tensor, a GPU-to-host
    sync, so call it once where data enters (an evaluation's entry, a notebook), not inside a training step."""
    lo, hi = (v.item() for v in torch.aminmax(x))
    if lo < 0 or hi > 1:
        raise ValueError(f"inputs must be pixels in [0, 1] (normalise inside the model), got min {lo:.3g}, max {hi:.3g}")
    return x


# ----------------------------------------------------------------------------------------------------
# Running it: attack the standard digits model

def check_px(flag: str, value: float, zero_ok: bool = False) -> float:
    """A radius or step size given on a command line, in pixel units: one error line unless it is a finite
    number in (0, 255] ([0, 255] with zero_ok, where 0 means "the default"). 255 is the whole pixel range."""
    return sat_cli.check_number(flag, value, 0, 255, lo_open=not zero_ok,
                                     hint=" (pixel units: 4 means 4/255" + ("; 0 = the default)" if zero_ok else ")"))


def standard_digits_model(out_dir, device, seed=0, quiet=False):
    """Train (with stage 03's loop, attack 'none') or reuse the standard digits model. Returns (model, path).
    quiet: no progress bars while training."""
    run_dir = os.path.join(out_dir, "digits_standard")
    path = os.path.join(run_dir, "final.pt")
    if os.path.isfile(path):
        print(f"reusing {path}")
    else:
        train = importlib.import_module("03_adv_train")   # lazy: stage 03 imports this file for pgd()
        cfg = train.preset_config("digits", attack="none", act="relu", seed=seed, out=run_dir)
        train.train(cfg, quiet=quiet)
    model, _ = sat_models.model_from_checkpoint(path, device)
    return model, path


def draw_examples(model, x, y, x_adv, path, n=5):
    import matplotlib.pyplot as plt
    with torch.no_grad():
        p_clean = F.softmax(model(x[:n]), 1)
        p_adv = F.softmax(model(x_adv[:n]), 1)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n))
    for i in range(n):
        delta = (x_adv[i] - x[i])[0]
        items = [(x[i, 0], p_clean[i], "clean"), (delta, None, "perturbation"), (x_adv[i, 0], p_adv[i], "adversarial")]
        for ax, (img, p, title) in zip(axes[i], items):
            if p is None:
                m = delta.abs().max().item() or 1.0
                ax.imshow(delta.cpu(), cmap="seismic", vmin=-m, vmax=m)
                ax.set_title(f"{title} (max {m * 255:.0f}/255)", fontsize=8)
            else:
                ax.imshow(img.cpu(), cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"{title}: '{p.argmax().item()}' {100 * p.max().item():.0f}% (true {y[i].item()})", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = sat_cli.ArgumentParser(description="PGD attack on the standard digits model")
    parser.add_argument("--eps", type=sat_cli.pixels("--eps"), default=EPS_PX["digits"], help="L-inf radius, pixel units (64 and 64/255 mean 64/255)")
    parser.add_argument("--steps", type=int, nargs="+", default=STEPS, help="PGD step counts to try")
    parser.add_argument("--out", default=OUT_DIR, help="output folder")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed for training and the random starts")
    parser.add_argument("--quiet", action="store_true", help="no progress bars while training the model")
    args = parser.parse_args(argv)
    check_px("--eps", args.eps)
    for k in args.steps:
        sat_cli.check_number("--steps", k, 1, 100_000)
    sat_cli.check_number("--seed", args.seed, 0, 2**32 - 1)
    sat_cli.check_out_dir(args.out)

    import matplotlib
    matplotlib.use("Agg")   # scripts only save figures; notebooks keep their own inline backend
    t0 = time.time()
    device = sat_processes.pick_device(args.device)
    model, _ = standard_digits_model(args.out, device, args.seed, quiet=args.quiet)
    x, y = (t.to(device) for t in sat_data.digits_tensors("test"))   # (500, 1, 8, 8), (500,)
    check_pixels(x)
    eps = px(args.eps)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()

    lines = [f"standard digits model, {len(y)} test images, eps = {args.eps:g}/255 = {eps:.4f}",
             f"{'attack':<10} {'steps':>5} {'step/255':>9} {'start':>7} {'robust acc':>11}",
             f"{'clean':<10} {0:>5} {'-':>9} {'-':>7} {100 * clean:>10.1f}%"]
    torch.manual_seed(args.seed)
    x_fgsm = pgd(model, x, y, eps, eps, 1, rand_start_prob=0.0)
    with torch.no_grad():
        acc = (model(x_fgsm).argmax(1) == y).float().mean().item()
    lines.append(f"{'FGSM':<10} {1:>5} {args.eps:>9.2f} {'clean':>7} {100 * acc:>10.1f}%")
    for k in args.steps:
        step = default_step(eps, k)
        torch.manual_seed(args.seed)
        broken_at = pgd_eval(model, x, y, eps, step, k)
        acc = (broken_at == -1).float().mean().item()
        lines.append(f"{'PGD-' + str(k):<10} {k:>5} {step * 255:>9.2f} {'random':>7} {100 * acc:>10.1f}%")
    print("\n".join(lines))
    with open(os.path.join(args.out, "attack_table.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")

    torch.manual_seed(args.seed)
    x_adv = pgd(model, x, y, eps, default_step(eps, 10), 10)
    fig = os.path.join(args.out, "adversarial_examples.png")
    draw_examples(model, x, y, x_adv, fig)
    print(f"wrote {fig} ({time.time() - t0:.0f} s in all)")


if __name__ == "__main__":
    sat_cli.run_cli(main)
