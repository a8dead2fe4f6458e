"""The checks of the exercises that ask for code: each grades one answer and says PASS or FAIL.

Each check runs the student's answer, compares it with a reference written in this file, prints ONE line,
    PASS  <exercise>: <what was measured> (tolerance ...)
    FAIL  <exercise>: <what was measured> (tolerance ...). Hint: <the likely mistake>
and returns True (PASS) or False (FAIL), so that a grader can `assert` it. The tolerance is stated in the line.

An answer must be the student's own code:
  * each reference here is written independently of the stage it re-implements (tests/test_checks.py checks
    that the two agree), so a check never needs the stage's function to decide;
  * while the answer runs, the stage's own function raises (its code is swapped, so `from ... import` aliases
    raise too): `return attack.pgd(...)` is a FAIL that says so. The exception is notebook 3's training step,
    which is asked to call stage 02's `pgd` for its inner max: there stage 03's `adversarial_training_step` and `smooth_grad_step`
    raise instead.

  check_pgd(my_pgd, model, x, y, eps)                      notebook 1, exercise 4: PGD from x itself
  check_pgd_random_start(my_pgd, model, x, y, eps)         notebook 1, exercise 4, second half: the random start
  check_smooth_relu(MyReLUSmoothGrad)                      notebook 2, exercise 4: ReLU forward, smooth backward
  check_training_step(my_training_step, model, x, y, eps)  notebook 3, exercise 2: the attacker/optimizer switch
  check_bootstrap(my_bootstrap)                            notebook 6, exercise 1: the paired seed x image bootstrap

tests/test_checks.py answers every exercise correctly and with its typical mistakes (PGD without the projection,
with the sign flipped, without the [0, 1] clamp, without .sign(); a smooth backward wrong at exactly 0 or without
alpha; a training step with attacker and optimizer swapped or ignoring smooth_grad; a bootstrap over seeds only,
over images only, unpaired) and checks that the right answers pass and every mistake fails.
"""
import contextlib
import functools
import importlib
import math

import numpy as np
import torch
import torch.nn.functional as F

REPO_CALL = "REPO_CALL"   # the marker in the message of a stage function that was called while an answer ran


def _verdict(ok, exercise, measured, hint=""):
    line = f"{'PASS' if ok else 'FAIL'}  {exercise}: {measured}" + ("" if ok or not hint else f". Hint: {hint}")
    print(line)
    return ok


@contextlib.contextmanager
def _stage_functions_raise(*names):
    """While the block runs, each named function ("02_pgd.pgd", "01_activations._ReLUWithSmoothGrad.forward")
    raises RuntimeError(REPO_CALL ...) instead of running. The function's code object is swapped, not the
    module's attribute, so a copy of the reference (`from ... import pgd`, `f = attack.pgd`) raises as well.
    A name that does not exist (the stage was restructured) is skipped."""
    swapped = []
    try:
        for name in names:
            parts = name.split(".")
            obj = importlib.import_module(parts[0])
            for p in parts[1:]:
                obj = getattr(obj, p, None)
            func = getattr(obj, "__func__", obj)   # a staticmethod's function
            code = getattr(func, "__code__", None)
            if code is None or code.co_freevars:   # not a plain function (a closure cannot take another code)
                continue
            scope = {}
            exec(f"def stub(*args, **kwargs):\n    raise RuntimeError({REPO_CALL + ': ' + name!r})", {}, scope)
            func.__code__ = scope["stub"].__code__
            swapped.append((func, code))
        yield
    finally:
        for func, code in swapped:
            func.__code__ = code


def _run(fn, *args, **kwargs):
    """fn(*args, **kwargs) -> (result, None), or (None, the FAIL line's text) if it raised."""
    try:
        return fn(*args, **kwargs), None
    except Exception as e:   # the student's code: any error is a FAIL with its message
        if str(e).startswith(REPO_CALL):
            return None, (f"your answer calls the repo's own {str(e).split(': ', 1)[1]}, which the check does not "
                          "accept: write it yourself")
        return None, f"your answer raised {type(e).__name__}: {e}"


# ----------------------------------------------------------------------------------------------------
# Notebook 1, exercise 4: PGD

PGD_EXERCISE = "notebook 1, exercise 4 (PGD from x)"
PGD_TOL_VALUE = 1e-5    # a pixel "differs" from the reference by more than this
PGD_TOL_SHARE = 0.001   # PASS: at most 0.1% of the pixels differ (a float rounding that flips one gradient sign)


def pgd_reference(model, x, y, eps, step, steps, start=None, sign=True, direction=1.0, project=True, box=True):
    """Untargeted L-inf PGD from x + start (default: x itself), written here, not imported. The keyword
    arguments other than `start` make the typical mistakes, for the hints (and the tests): sign=False steps
    along the raw gradient, direction=-1 descends the loss, project=False skips the ball, box=False the box."""
    delta = torch.zeros_like(x) if start is None else start.clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = delta.detach() + direction * step * (grad.sign() if sign else grad)
        if project:
            delta = delta.clamp(-eps, eps)
        if box:
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def _share_differing(a, b):
    return ((a - b).abs() > PGD_TOL_VALUE).float().mean().item()


def check_pgd(fn, model, x, y, eps, steps=10):
    """fn(model, x, y, eps, step, steps) -> x_adv, from x itself (no random start), against pgd_reference with
    the same step (stage 02's rule: max(eps/4, eps/steps)), pixel for pixel. PASS: |x_adv - x| <= eps, x_adv in
    [0, 1], and at most 0.1% of the pixels differ from the reference by more than 1e-5."""
    model.eval()
    step = max(eps / 4, eps / steps)
    with _stage_functions_raise("02_pgd.pgd", "02_pgd.pgd_eval"):
        mine, error = _run(fn, model, x, y, eps, step, steps)
    if error:
        return _verdict(False, PGD_EXERCISE, error, "")
    if mine is None:
        return _verdict(False, PGD_EXERCISE, "my_pgd returns None", "write it in the cell above, then run this cell again")
    if not isinstance(mine, torch.Tensor) or mine.shape != x.shape:
        return _verdict(False, PGD_EXERCISE, f"my_pgd returned {type(mine).__name__} {getattr(mine, 'shape', '')}",
                        f"return x_adv, a tensor of x's shape {tuple(x.shape)}")
    mine = mine.detach()
    ref = pgd_reference(model, x, y, eps, step, steps)
    share = _share_differing(mine, ref)
    largest = (mine - x).abs().max().item()
    measured = (f"{100 * share:.2f}% of pixels differ from the reference by more than {PGD_TOL_VALUE:g} "
                f"(tolerance {100 * PGD_TOL_SHARE:g}%); largest |x_adv - x| {255 * largest:.2f}/255 (eps {255 * eps:.4g}/255); "
                f"pixels in [{mine.min().item():.3f}, {mine.max().item():.3f}]")
    ok = share <= PGD_TOL_SHARE and largest <= eps + 1e-6 and mine.min() >= 0 and mine.max() <= 1
    if ok:
        return _verdict(True, PGD_EXERCISE, measured)
    # which typical mistake does the answer reproduce? each variant is the reference with one thing wrong
    variants = {"the ascent step along the raw gradient, without .sign()": dict(sign=False),
                "a step that descends the loss (sign flipped): PGD ascends, delta + step * grad.sign()": dict(direction=-1.0),
                "no projection onto the ball: clamp delta to [-eps, eps] after each step": dict(project=False),
                "no clamp to the image box: x + delta must stay in [0, 1]": dict(box=False)}
    for hint, kw in variants.items():
        if _share_differing(mine, pgd_reference(model, x, y, eps, step, steps, **kw)) <= PGD_TOL_SHARE:
            return _verdict(False, PGD_EXERCISE, measured, f"your x_adv is what {hint}")
    if largest > eps + 1e-6:
        hint = "|x_adv - x| exceeds eps: project delta onto the ball [-eps, eps] after each step"
    elif mine.min() < 0 or mine.max() > 1:
        hint = "pixels left [0, 1]: clamp x + delta to the image box after each step"
    elif largest < 0.5 * step:
        hint = "delta barely moved: step by step * grad.sign(), not by the raw (tiny) gradient"
    else:
        hint = ("check the ascent direction (+ step * sign of the loss's gradient w.r.t. delta), `steps` steps of "
                "size `step`, a start at x itself (no random start here), and model(x + delta) in eval mode")
    return _verdict(False, PGD_EXERCISE, measured, hint)


START_EXERCISE = "notebook 1, exercise 4 (PGD's random start)"
START_TOL_LOSS = 0.10   # PASS: the attack's mean cross-entropy within 10% of the reference's (seed to seed: ~3%)


def check_pgd_random_start(fn, model, x, y, eps, steps=10, seeds=5):
    """fn(model, x, y, eps, step, steps, rand_start=True), in two parts.
    1. The start: on a grey image (every pixel 0.5, so that the box cuts nothing off) with one step of size
       eps/1000, x_adv - x is the start delta_0 to within 0.1% of eps. PASS: |delta_0| <= eps, its mean within
       0.05 eps of 0, its standard deviation within 5% of eps/sqrt(3) (the uniform distribution's), and between
       45% and 55% of its values inside [-eps/2, eps/2] (uniform: 50%).
    2. The attack: from `seeds` seeds, |x_adv - x| <= eps and x_adv in [0, 1], two seeds give different x_adv (the
       start is random), and the mean cross-entropy on x_adv (over the seeds) is within 10% of the reference's
       (pgd_reference from uniform starts of its own): it varies by about 3% from seed to seed, a start drawn
       again at every step loses three quarters of it. (Robust accuracy is printed too: on a few images it
       varies too much from seed to seed to grade.)"""
    model.eval()
    grey = torch.full_like(x, 0.5)
    with _stage_functions_raise("02_pgd.pgd", "02_pgd.pgd_eval"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        start, error = _run(fn, model, grey, y, eps, eps / 1000, 1, rand_start=True)
        outs = []
        for seed in range(seeds):
            if error:
                break
            torch.manual_seed(seed)
            out, error = _run(fn, model, x, y, eps, max(eps / 4, eps / steps), steps, rand_start=True)
            outs.append(out)
    if error:
        if "rand_start" in error:
            error += " (give my_pgd an argument rand_start=False and draw the start when it is True)"
        return _verdict(False, START_EXERCISE, error, "")
    if start is None or any(o is None for o in outs):
        return _verdict(False, START_EXERCISE, "my_pgd returns None with rand_start=True", "write the random start")
    d = (start.detach() - grey) / eps   # the start in units of eps (one step of eps/1000 added)
    mean, std, inner, largest = d.mean().item(), d.std().item(), (d.abs() <= 0.5).float().mean().item(), d.abs().max().item()
    measured = (f"start delta_0 / eps: mean {mean:+.3f} (tolerance +-0.05), std {std:.3f} (uniform: {1 / math.sqrt(3):.3f} "
                f"+- 5%), {100 * inner:.1f}% inside [-eps/2, eps/2] (45-55%), largest {largest:.3f} (<= 1.001)")
    if largest < 0.01:
        return _verdict(False, START_EXERCISE, measured, "with rand_start=True the attack still starts at x: draw "
                        "delta_0 uniform in [-eps, eps] before the first step (torch.empty_like(x).uniform_(-eps, eps))")
    if not (largest <= 1.001 and abs(mean) <= 0.05 and abs(std * math.sqrt(3) - 1) <= 0.05 and 0.45 <= inner <= 0.55):
        at_edge = (d.abs() > 0.99).float().mean().item()   # uniform: 1%
        if mean > 0.25:
            hint = "the start is one-sided: draw it in [-eps, eps], e.g. (torch.rand_like(x) * 2 - 1) * eps"
        elif largest > 1.001:
            hint = "the start leaves the ball: draw it uniform in [-eps, eps]"
        elif at_edge > 0.9:
            hint = "the start sits at the corners (+-eps): draw it uniform in [-eps, eps], not eps * sign(...)"
        elif at_edge > 0.05:
            hint = (f"{100 * at_edge:.0f}% of the start sits at +-eps: it was drawn wider than the ball and clipped "
                    "(a Gaussian?): draw it uniform in [-eps, eps]")
        else:
            hint = "the start is not uniform in [-eps, eps]: torch.empty_like(x).uniform_(-eps, eps)"
        return _verdict(False, START_EXERCISE, measured, hint)
    outs = [o.detach() for o in outs]
    if any((o - x).abs().max() > eps + 1e-6 or o.min() < 0 or o.max() > 1 for o in outs):
        return _verdict(False, START_EXERCISE, measured + "; but x_adv leaves the ball or the box",
                        "keep both projections after every step, the random start changes nothing there")
    if all(torch.equal(outs[0], o) for o in outs[1:]):
        return _verdict(False, START_EXERCISE, measured + f"; but {seeds} seeds give the same x_adv",
                        "draw the start from torch's random generator, inside the function, on every call")
    step = max(eps / 4, eps / steps)

    def strength(x_advs):   # (accuracy, mean cross-entropy) on the adversarial images, averaged over the seeds
        with torch.no_grad():
            out = [(model(o).argmax(1) == y).float().mean().item() for o in x_advs], [F.cross_entropy(model(o), y).item() for o in x_advs]
        return np.mean(out[0]), np.mean(out[1])
    acc, loss = strength(outs)
    refs = []
    with torch.random.fork_rng(devices=[]):
        for seed in range(seeds):
            torch.manual_seed(1000 + seed)
            start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1) - x   # stage 02's start, cut to the box
            refs.append(pgd_reference(model, x, y, eps, step, steps, start=start))
    ref_acc, ref_loss = strength(refs)
    measured += (f"; after {steps} steps, mean of {seeds} seeds: cross-entropy {loss:.3f} (yours) vs {ref_loss:.3f} "
                 f"(reference; tolerance {100 * START_TOL_LOSS:g}%), robust accuracy {100 * acc:.1f}% vs {100 * ref_acc:.1f}%")
    if abs(loss - ref_loss) > START_TOL_LOSS * ref_loss:
        return _verdict(False, START_EXERCISE, measured,
                        "the start looks right but the attack is not: the steps after it are those of the first half "
                        "(its check must pass first); draw the start once, before the loop, not at every step")
    return _verdict(True, START_EXERCISE, measured)


# ----------------------------------------------------------------------------------------------------
# Notebook 2, exercise 4: ReLU forward, smooth backward

SMOOTH_EXERCISE = "notebook 2, exercise 4 (ReLU forward, smooth backward)"
SMOOTH_TOL = 1e-9   # float64: the largest difference from the reference that passes


def check_smooth_relu(fn, alphas=(10.0, 3.0)):
    """fn: a torch.autograd.Function; fn.apply(z, alpha) on z = -1, -0.99, ..., 0, ..., 1 (201 points in float64,
    0 exactly among them) with an upstream gradient that is not all ones. Reference: forward max(0, z), gradient
    upstream * sigmoid(alpha * z), so 0.5 * upstream at z = 0 exactly. PASS: both within 1e-9, for alpha = 10
    and alpha = 3."""
    if not (isinstance(fn, type) and issubclass(fn, torch.autograd.Function)):
        return _verdict(False, SMOOTH_EXERCISE, f"{fn!r} is not a torch.autograd.Function subclass",
                        "class MyReLUSmoothGrad(torch.autograd.Function) with static forward(ctx, x, alpha) and backward(ctx, grad_out)")
    acts = importlib.import_module("01_activations")
    own = [c for c in fn.__mro__[1:] if getattr(c, "__module__", "") == acts.__name__]
    if own:
        return _verdict(False, SMOOTH_EXERCISE, f"MyReLUSmoothGrad subclasses stage 01's {own[0].__name__}",
                        "write forward and backward yourself")
    stage_functions = [f"01_activations.{name}.{m}" for name, c in vars(acts).items()
                       if isinstance(c, type) and issubclass(c, torch.autograd.Function) for m in ("forward", "backward")]
    z = (torch.arange(-100, 101, dtype=torch.float64) / 100).requires_grad_(True)   # z[100] is 0.0 exactly
    upstream = 0.5 + torch.arange(201, dtype=torch.float64) % 7 / 7                   # not all ones, deterministic
    zero = 100
    for alpha in alphas:
        with _stage_functions_raise(*stage_functions):
            out, error = _run(fn.apply, z, alpha)
            if error is None and out is None:
                return _verdict(False, SMOOTH_EXERCISE, "MyReLUSmoothGrad.forward returns None",
                                "write it in the cell above, then run this cell again")
            if error is None:
                try:
                    (g,) = torch.autograd.grad(out, z, upstream)
                except Exception as e:
                    error = f"the backward pass raised {type(e).__name__}: {e}"
                    if str(e).startswith(REPO_CALL):
                        error = "your backward calls stage 01's own Function, which the check does not accept"
        if error:
            return _verdict(False, SMOOTH_EXERCISE, error, "backward returns one gradient per input of forward: (grad for x, None for alpha)")
        want_out, want_g = z.detach().clamp_min(0), upstream * torch.sigmoid(alpha * z.detach())
        d_out, d_g = (out.detach() - want_out).abs().max().item(), (g - want_g).abs().max().item()
        measured = (f"alpha = {alpha:g}: largest forward difference from max(0, z) {d_out:.1e}, largest gradient "
                    f"difference from upstream * sigmoid(alpha z) {d_g:.1e} (tolerance {SMOOTH_TOL:g}); gradient at z = 0 "
                    f"exactly: {g[zero].item() / upstream[zero].item():.3f} x upstream (sigmoid(0) = 0.5)")
        if d_out > SMOOTH_TOL:
            return _verdict(False, SMOOTH_EXERCISE, measured, "the forward pass must be ReLU's value, x.clamp_min(0)")
        if d_g > SMOOTH_TOL:
            ratio = (g / upstream).detach()
            away = (z.detach() != 0)
            if (ratio[away] - torch.sigmoid(alpha * z.detach()[away])).abs().max() <= SMOOTH_TOL:
                hint = "right everywhere except at z = 0 exactly, where sigmoid(alpha * 0) = 0.5 (not ReLU's 0 or 1)"
            elif (ratio - torch.sigmoid(z.detach())).abs().max() <= SMOOTH_TOL:
                hint = "the gradient is sigmoid(z): multiply by alpha inside, sigmoid(alpha * z)"
            elif (ratio - torch.sigmoid(10 * z.detach())).abs().max() <= SMOOTH_TOL:
                hint = "the gradient is sigmoid(10 z) whatever alpha is: use the alpha given to forward (keep it in ctx)"
            elif (g - torch.sigmoid(alpha * z.detach())).abs().max() <= SMOOTH_TOL:
                hint = "multiply sigmoid(alpha z) by the incoming gradient grad_out (the chain rule)"
            elif (ratio - (z.detach() > 0).double()).abs().max() <= SMOOTH_TOL:
                hint = "that is ReLU's own step derivative: the backward should use sigmoid(alpha z)"
            else:
                hint = "the backward returns grad_out * sigmoid(alpha * x), with x saved in forward (the input, not the output)"
            return _verdict(False, SMOOTH_EXERCISE, measured, hint)
    return _verdict(True, SMOOTH_EXERCISE, measured + f"; the same for alpha = {', '.join(f'{a:g}' for a in alphas[:-1])}")


# ----------------------------------------------------------------------------------------------------
# Notebook 3, exercise 2: the attacker/optimizer switch of the training step (Table 1)

STEP_EXERCISE = "notebook 3, exercise 2 (the attacker/optimizer switch)"
STEP_TOL = 1e-4   # the largest weight difference, as a share of the largest weight change of the reference step
SMOOTH_GRAD_MODES = ("none", "attacker", "optimizer", "both")


def training_step_reference(model, x, y, optimizer, eps, step, smooth_grad, attacker=None, optimizer_side=None,
                            train_mode=True):
    """One PGD-1 adversarial training step (Eq. 1; Table 1's switch): stage 02's pgd for the inner max with the
    smooth backward on iff smooth_grad is "attacker" or "both", then one optimizer step on the mean cross-entropy
    of x_adv, in train mode, with the smooth backward on iff smooth_grad is "optimizer" or "both". Written here,
    not imported from stage 03. attacker / optimizer_side override who gets the smooth backward, and
    train_mode=False keeps eval mode: the typical mistakes, for the hints and the tests."""
    acts, attack = importlib.import_module("01_activations"), importlib.import_module("02_pgd")
    on_attacker = smooth_grad in ("attacker", "both") if attacker is None else attacker
    on_optimizer = smooth_grad in ("optimizer", "both") if optimizer_side is None else optimizer_side
    with acts.smooth_backward(model, on_attacker):
        x_adv = attack.pgd(model, x, y, eps, step, 1)
    model.train(train_mode)
    with acts.smooth_backward(model, on_optimizer):
        loss = F.cross_entropy(model(x_adv), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.detach()


def _weights_after(step_fn, base, x, y, eps, mode, **kw):
    """Weights of a copy of `base` after one step_fn step (SGD, lr 0.1, momentum 0.9) from torch seed 0."""
    import copy
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)   # the same random start for every step function
        out = step_fn(model, x, y, opt, eps, eps, mode, **kw)
    return out, torch.cat([p.detach().flatten() for p in model.parameters()])


def check_training_step(fn, model, x, y, eps):
    """fn(model, x, y, optimizer, eps, step, smooth_grad) for each smooth_grad in none, attacker, optimizer, both,
    from the same weights and the same random start as training_step_reference. `model` must hold stage 01's
    SmoothGradReLU (acts.swap_activations(model, "relu", smooth_grad=True)). PASS: for every setting the largest
    weight difference is at most 1e-4 of the largest weight change the reference step makes."""
    acts = importlib.import_module("01_activations")
    if not any(isinstance(m, acts.SmoothGradReLU) for m in model.modules()):
        raise ValueError("check_training_step needs a model with SmoothGradReLU: acts.swap_activations(model, 'relu', smooth_grad=True)")
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    ref = {m: _weights_after(training_step_reference, model, x, y, eps, m)[1] for m in SMOOTH_GRAD_MODES}
    scale = max((ref[m] - before).abs().max().item() for m in SMOOTH_GRAD_MODES)
    mine, diffs = {}, {}
    for mode in SMOOTH_GRAD_MODES:
        with _stage_functions_raise("03_adv_train.adversarial_training_step", "03_adv_train.smooth_grad_step"):
            result, error = _run(_weights_after, fn, model, x, y, eps, mode)
        if error:
            return _verdict(False, STEP_EXERCISE, f"smooth_grad={mode}: {error}", "")
        mine[mode] = result[1]
        diffs[mode] = (mine[mode] - ref[mode]).abs().max().item() / scale
    if all(torch.equal(mine[m], before) for m in SMOOTH_GRAD_MODES):
        return _verdict(False, STEP_EXERCISE, "my_training_step changed no weight",
                        "write it in the cell above (the optimizer step included), then run this cell again")
    measured = ("largest weight difference from the reference, as a share of the step's largest weight change: "
                + ", ".join(f"{m} {diffs[m]:.1e}" for m in SMOOTH_GRAD_MODES) + f" (tolerance {STEP_TOL:g})")
    if max(diffs.values()) <= STEP_TOL:
        return _verdict(True, STEP_EXERCISE, measured)

    def same(a, b):
        return (a - b).abs().max().item() / scale <= STEP_TOL
    if all(same(mine[m], ref["none"]) for m in SMOOTH_GRAD_MODES):
        hint = "the step ignores smooth_grad: switch the smooth backward with acts.smooth_backward(model, on) in each half"
    elif same(mine["attacker"], ref["optimizer"]) and same(mine["optimizer"], ref["attacker"]):
        hint = ("attacker and optimizer are swapped: the smooth backward is on for the attack (pgd) iff smooth_grad is "
                "attacker or both, for the weight update iff it is optimizer or both")
    elif all(same(mine[m], ref[m]) for m in ("none", "attacker")):
        hint = "the optimizer half is wrong (the weight update's backward): on iff smooth_grad is optimizer or both"
    elif all(same(mine[m], ref[m]) for m in ("none", "optimizer")):
        hint = "the attacker half is wrong (pgd's backward): on iff smooth_grad is attacker or both"
    elif same(mine["none"], _weights_after(training_step_reference, model, x, y, eps, "none", train_mode=False)[1]):
        hint = "the outer min runs in eval mode: call model.train() after the attack (BatchNorm uses batch statistics)"
    else:
        hint = ("even smooth_grad='none' differs: the inner max is attack.pgd(model, x, y, eps, step, 1) with its random "
                "start, the outer min one optimizer step on F.cross_entropy(model(x_adv), y) (the mean) in train mode")
    return _verdict(False, STEP_EXERCISE, measured, hint)


# ----------------------------------------------------------------------------------------------------
# Notebook 6, exercise 1: the paired seed x image bootstrap

BOOT_EXERCISE = "notebook 6, exercise 1 (the paired bootstrap)"
BOOT_REPS = 2000          # the replicates the answer is asked for
BOOT_TOL_WIDTH = 0.12     # PASS: the interval's width within 12% of the reference's ...
BOOT_TOL_CENTER = 0.10    # ... and its midpoint within 10% of the reference's width of the reference's midpoint


def bootstrap_data():
    """Synthetic (seeds, images) 0/1 grids a (6 x 300) and b (6 x 300) on the same images, built so that the two
    sources of noise are both visible: image difficulty varies a lot (the pairing cancels most of it) and seeds
    vary a little (about as much as the paired images). On them the typical mistakes give intervals about 0.5x
    (seeds only), 0.6x (images only) and 2.2x (images unpaired) as wide as the right one (tests/test_checks.py)."""
    rng = np.random.default_rng(20260)
    difficulty = rng.normal(0, 4.0, 300)                        # per image, shared by both sides

    def side(effect):
        skill = rng.normal(0, 0.1, 6)                           # per seed: each seed trains another model
        p = 1 / (1 + np.exp(-(difficulty[None] + skill[:, None] + effect)))
        return (rng.random(p.shape) < p).astype(np.float32)
    return side(0.2), side(0.0)


def bootstrap_reference(a, b, reps, rng, images="paired", seeds=True):
    """Replicated differences mean(a) - mean(b), written here (not stage 04's): per replicate the images drawn
    with replacement once and shared by a and b (images="paired"), and each side's seeds drawn with
    replacement separately. The typical mistakes, for the hints and the tests: images="none" (seeds only),
    seeds=False (images only), images="unpaired" (each side draws its own images)."""
    n, out = a.shape[1], []
    for start in range(0, reps, 500):
        k = min(500, reps - start)
        img_a = rng.integers(0, n, (k, n)) if images != "none" else np.tile(np.arange(n), (k, 1))
        img_b = img_a if images != "unpaired" else rng.integers(0, n, (k, n))
        acc_a = np.take_along_axis(a[:, None, :], img_a[None], 2).mean(2)   # (seeds, k): each seed's accuracy
        acc_b = np.take_along_axis(b[:, None, :], img_b[None], 2).mean(2)
        cols = np.arange(k)
        pick_a = rng.integers(0, len(a), (len(a), k)) if seeds else np.tile(np.arange(len(a))[:, None], (1, k))
        pick_b = rng.integers(0, len(b), (len(b), k)) if seeds else np.tile(np.arange(len(b))[:, None], (1, k))
        out.append(acc_a[pick_a, cols].mean(0) - acc_b[pick_b, cols].mean(0))
    return np.concatenate(out)


def _interval(reps):
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(lo), float(hi)


BOOT_MISTAKES = {"resamples only the seeds: draw the images too, once per replicate, shared by both sides": dict(images="none"),
                 "resamples only the images: draw each side's seeds too, with replacement": dict(seeds=False),
                 "draws the images separately for the two sides (unpaired): draw them once per replicate and index "
                 "both a and b with them": dict(images="unpaired")}


@functools.lru_cache(maxsize=1)
def _bootstrap_intervals():
    """The right interval on bootstrap_data() and each typical mistake's, 10,000 replicates each (computed once)."""
    a, b = bootstrap_data()
    rng = np.random.default_rng(1)
    return _interval(bootstrap_reference(a, b, 10_000, rng)), \
        {hint: _interval(bootstrap_reference(a, b, 10_000, rng, **kw)) for hint, kw in BOOT_MISTAKES.items()}


def check_bootstrap(fn):
    """fn(a, b, reps, rng) -> (diff, lo, hi) on bootstrap_data(), against bootstrap_reference with 10,000
    replicates. PASS: diff = mean(a) - mean(b) to 1e-6, the interval's width within 12% of the reference's and
    its midpoint within 10% of the reference's width (2,000 replicates put about 2% of Monte Carlo error on
    each end)."""
    a, b = bootstrap_data()
    with _stage_functions_raise("04_eval.bootstrap_diff"):
        mine, error = _run(fn, a, b, BOOT_REPS, np.random.default_rng(0))
    if error:
        return _verdict(False, BOOT_EXERCISE, error, "")
    if mine is None:
        return _verdict(False, BOOT_EXERCISE, "my_bootstrap returns None", "write it in the cell above, then run this cell again")
    try:
        diff, lo, hi = (float(v) for v in mine)
    except (TypeError, ValueError):
        return _verdict(False, BOOT_EXERCISE, f"my_bootstrap returned {mine!r}", "return three numbers: (diff, lo, hi)")
    (ref_lo, ref_hi), mistakes = _bootstrap_intervals()
    width, ref_width = hi - lo, ref_hi - ref_lo
    measured = (f"yours {100 * diff:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}], reference {100 * (a.mean() - b.mean()):+.2f} "
                f"[{100 * ref_lo:+.2f}, {100 * ref_hi:+.2f}] points; width {width / ref_width:.2f}x the reference's "
                f"(tolerance 1 +- {BOOT_TOL_WIDTH:g}), midpoint off by {abs((lo + hi) - (ref_lo + ref_hi)) / 2 / ref_width:.2f} "
                f"of its width (tolerance {BOOT_TOL_CENTER:g})")
    if abs(diff - float(a.mean() - b.mean())) > 1e-6:
        hint = ("the difference is in points, not a fraction: return fractions" if abs(diff - 100 * float(a.mean() - b.mean())) < 1e-4
                else "diff is the plain difference of the two means, a.mean() - b.mean(), before any resampling")
        return _verdict(False, BOOT_EXERCISE, measured, hint)

    def close(l2, h2, l1, h1):
        w = h1 - l1
        return abs((h2 - l2) / w - 1) <= BOOT_TOL_WIDTH and abs((l2 + h2) - (l1 + h1)) / 2 / w <= BOOT_TOL_CENTER
    if close(lo, hi, ref_lo, ref_hi):
        return _verdict(True, BOOT_EXERCISE, measured)
    for hint, interval in mistakes.items():
        if close(lo, hi, *interval):
            return _verdict(False, BOOT_EXERCISE, measured, f"your interval matches a bootstrap that {hint}")
    hint = ("per replicate: image indices rng.integers(0, n, n) shared by a and b, seed indices drawn separately for "
            "each side, the difference of the two resampled means; then the 2.5th and 97.5th percentiles")
    return _verdict(False, BOOT_EXERCISE, measured, hint)
