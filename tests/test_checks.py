"""The exercises' checks (notebooks/checks.py) grade: each right answer passes, each typical mistake fails.

Every exercise that asks for code is answered here as its solution does, and again with the mistakes a student
makes; the check function is called on each answer directly (no notebook runs), on the small adversarially trained
digits model of conftest.py and 32 test images. A call of the repo's own function must fail too, and each of the
checks' references must agree with the stage it re-implements (so that a check can trust it)."""
import copy
import importlib
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "notebooks"))
checks = importlib.import_module("checks")

EPS = 64 / 255


@pytest.fixture(scope="module")
def digits(trained_digits):
    model, _ = trained_digits
    x, y = importlib.import_module("sat_data").digits_tensors("test")
    return model.eval(), x[:32], y[:32]


def verdicts(capsys):
    """The lines the checks printed since the last call."""
    return capsys.readouterr().out.strip().splitlines()


# ----------------------------------------------------------------------------------------------------
# Notebook 1, exercise 4: PGD, and its random start

def make_pgd(sign=True, direction=1.0, project=True, box=True, rand="uniform", redraw=False):
    """The solution of notebook 1's exercise 4 with one switch per typical mistake."""
    def my_pgd(model, x, y, eps, step, steps, rand_start=False):
        delta = torch.zeros_like(x)

        def start():
            if rand == "uniform":
                return torch.empty_like(x).uniform_(-eps, eps)
            if rand == "one-sided":
                return torch.rand_like(x) * eps
            if rand == "corners":
                return eps * torch.randn_like(x).sign()
            if rand == "gauss":
                return eps * torch.randn_like(x)
            return torch.zeros_like(x)
        if rand_start:
            delta = (x + start()).clamp(0, 1) - x
        for _ in range(steps):
            if rand_start and redraw:
                delta = (x + start()).clamp(0, 1) - x
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            delta = delta.detach() + direction * step * (grad.sign() if sign else grad)
            if project:
                delta = delta.clamp(-eps, eps)
            if box:
                delta = (x + delta).clamp(0, 1) - x
        return (x + delta).detach()
    return my_pgd


def pgd_mean_loss(model, x, y, eps, step, steps, rand_start=False):
    """Right, written another way: x_adv as the variable, the mean loss, the ball as min/max around x."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def test_pgd_reference_is_stage_02s(digits, attack):
    model, x, y = digits
    step = attack.default_step(EPS, 10)
    assert torch.equal(checks.pgd_reference(model, x, y, EPS, step, 10), attack.pgd(model, x, y, EPS, step, 10, rand_start_prob=0.0))


@pytest.mark.parametrize("answer, passes, hint", [
    (make_pgd(), True, None),
    (pgd_mean_loss, True, None),
    (make_pgd(project=False), False, "projection onto the ball"),
    (make_pgd(direction=-1.0), False, "sign flipped"),
    (make_pgd(box=False), False, "image box"),
    (make_pgd(sign=False), False, ".sign()"),
    (lambda model, x, y, eps, step, steps, rand_start=False: None, False, "returns None"),
], ids=["right", "right, another way", "no projection", "sign flipped", "no [0, 1] clamp", "no sign", "not written"])
def test_pgd_check(digits, capsys, answer, passes, hint):
    model, x, y = digits
    assert checks.check_pgd(answer, model, x, y, EPS) is passes
    (line,) = verdicts(capsys)
    assert line.startswith("PASS" if passes else "FAIL") and ("tolerance" in line or "None" in line) and (hint is None or hint in line), line


def test_pgd_check_refuses_stage_02s_pgd(digits, attack, capsys):
    model, x, y = digits
    from_stage = lambda model, x, y, eps, step, steps, rand_start=False: attack.pgd(model, x, y, eps, step, steps, rand_start_prob=0.0)  # noqa: E731
    assert checks.check_pgd(from_stage, model, x, y, EPS) is False
    assert "02_pgd.pgd" in verdicts(capsys)[0]
    step = attack.default_step(EPS, 10)   # and stage 02's pgd works again after the check
    assert torch.equal(attack.pgd(model, x, y, EPS, step, 10, rand_start_prob=0.0), checks.pgd_reference(model, x, y, EPS, step, 10))


@pytest.mark.parametrize("answer, passes, hint", [
    (make_pgd(), True, None),
    (make_pgd(rand="none"), False, "starts at x"),
    (make_pgd(rand="one-sided"), False, "one-sided"),
    (make_pgd(rand="corners"), False, "corners"),
    (make_pgd(rand="gauss"), False, "clipped"),
    (make_pgd(redraw=True), False, "not at every step"),
    (make_pgd(project=False), False, "leaves the ball or the box"),
    (checks.pgd_reference, False, "rand_start"),   # the first half only: no rand_start argument
], ids=["right", "no start", "one-sided", "corners", "gaussian", "redrawn every step", "no projection", "first half only"])
def test_random_start_check(digits, capsys, answer, passes, hint):
    model, x, y = digits
    assert checks.check_pgd_random_start(answer, model, x, y, EPS) is passes
    (line,) = verdicts(capsys)
    assert line.startswith("PASS" if passes else "FAIL") and (hint is None or hint in line), line


# ----------------------------------------------------------------------------------------------------
# Notebook 2, exercise 4: ReLU forward, smooth backward

def make_smooth(at_zero=None, alpha_used="alpha", chain=True, save_output=False):
    class MyReLUSmoothGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, alpha):
            out = x.clamp_min(0)
            ctx.save_for_backward(out if save_output else x)
            ctx.alpha = alpha
            return out

        @staticmethod
        def backward(ctx, grad_out):
            (x,) = ctx.saved_tensors
            a = {"alpha": ctx.alpha, "none": 1.0, "ten": 10.0}[alpha_used]
            d = torch.sigmoid(a * x)
            if at_zero is not None:
                d = torch.where(x == 0, torch.full_like(x, at_zero), d)
            return (grad_out * d if chain else d), None
    return MyReLUSmoothGrad


class FromStage01(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        acts = importlib.import_module("01_activations")
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return acts._ReLUWithSmoothGrad.forward(ctx, x, alpha)

    @staticmethod
    def backward(ctx, grad_out):
        return importlib.import_module("01_activations")._ReLUWithSmoothGrad.backward(ctx, grad_out)


def test_smooth_reference_is_stage_01s(acts):
    z = (torch.arange(-100, 101, dtype=torch.float64) / 100).requires_grad_(True)
    with acts.smooth_backward(m := acts.SmoothGradReLU(), True):
        (g,) = torch.autograd.grad(m(z).sum(), z)
    assert torch.equal(g, torch.sigmoid(acts.PSOFTPLUS_ALPHA * z.detach())) and g[100] == 0.5


@pytest.mark.parametrize("answer, passes, hint", [
    (make_smooth(), True, None),
    (make_smooth(at_zero=0.0), False, "at z = 0 exactly"),
    (make_smooth(at_zero=1.0), False, "at z = 0 exactly"),
    (make_smooth(alpha_used="none"), False, "sigmoid(alpha * z)"),
    (make_smooth(alpha_used="ten"), False, "whatever alpha is"),
    (make_smooth(chain=False), False, "grad_out"),
    (make_smooth(save_output=True), False, "the input, not the output"),
    (FromStage01, False, "01_activations"),
], ids=["right", "0 at zero", "1 at zero", "no alpha", "alpha fixed to 10", "no chain rule", "output saved", "stage 01's"])
def test_smooth_relu_check(capsys, answer, passes, hint):
    assert checks.check_smooth_relu(answer) is passes
    (line,) = verdicts(capsys)
    assert line.startswith("PASS" if passes else "FAIL") and (hint is None or hint in line), line


def test_smooth_relu_check_refuses_a_subclass_of_stage_01s(acts, capsys):
    assert checks.check_smooth_relu(type("Mine", (acts._ReLUWithSmoothGrad,), {})) is False
    assert "subclasses stage 01" in verdicts(capsys)[0]


# ----------------------------------------------------------------------------------------------------
# Notebook 3, exercise 2: the attacker/optimizer switch

def make_step(who_attacker=("attacker", "both"), who_optimizer=("optimizer", "both"), train=True):
    def my_training_step(model, x, y, optimizer, eps, step, smooth_grad):
        acts, attack = importlib.import_module("01_activations"), importlib.import_module("02_pgd")
        with acts.smooth_backward(model, smooth_grad in who_attacker):
            x_adv = attack.pgd(model, x, y, eps, step, 1)
        model.train(train)
        with acts.smooth_backward(model, smooth_grad in who_optimizer):
            loss = F.cross_entropy(model(x_adv), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return loss.detach()
    return my_training_step


@pytest.fixture(scope="module")
def switchable(digits):
    model, x, y = digits
    acts = importlib.import_module("01_activations")
    model = copy.deepcopy(model)
    acts.swap_activations(model, "relu", smooth_grad=True)
    return model, x, y


def test_training_step_reference_is_stage_03s(switchable, train_mod):
    model, x, y = switchable
    for mode in checks.SMOOTH_GRAD_MODES:
        _, mine = checks._weights_after(checks.training_step_reference, model, x, y, EPS, mode)

        def stage03(m, x, y, opt, eps, step, smooth_grad):
            return train_mod.smooth_grad_step(m, x, y, opt, eps, step, 1, smooth_grad=smooth_grad)
        _, theirs = checks._weights_after(stage03, model, x, y, EPS, mode)
        assert torch.equal(mine, theirs), mode


@pytest.mark.parametrize("answer, passes, hint", [
    (make_step(), True, None),
    (make_step(who_attacker=("optimizer", "both"), who_optimizer=("attacker", "both")), False, "swapped"),
    (make_step(who_attacker=(), who_optimizer=()), False, "ignores smooth_grad"),
    (make_step(who_attacker=("both",)), False, "attacker half"),
    (make_step(train=False), False, "eval mode"),
    (lambda model, x, y, optimizer, eps, step, smooth_grad: None, False, "changed no weight"),
], ids=["right", "swapped", "ignores smooth_grad", "attacker half", "eval mode", "not written"])
def test_training_step_check(switchable, capsys, answer, passes, hint):
    model, x, y = switchable
    assert checks.check_training_step(answer, model, x, y, EPS) is passes
    (line,) = verdicts(capsys)
    assert line.startswith("PASS" if passes else "FAIL") and (hint is None or hint in line), line


def test_training_step_check_refuses_stage_03s(switchable, train_mod, capsys):
    model, x, y = switchable

    def from_stage(model, x, y, optimizer, eps, step, smooth_grad):
        return train_mod.adversarial_training_step(model, x, y, optimizer, eps, step, 1, smooth_grad=smooth_grad)[0]
    assert checks.check_training_step(from_stage, model, x, y, EPS) is False
    assert "03_adv_train.adversarial_training_step" in verdicts(capsys)[0]


# ----------------------------------------------------------------------------------------------------
# Notebook 6, exercise 1: the paired bootstrap

def make_bootstrap(images="paired", seeds=True, percent=False):
    def my_bootstrap(a, b, reps, rng):
        n = a.shape[1]
        diffs = np.empty(reps)
        for k in range(reps):
            img_a = rng.integers(0, n, n) if images != "none" else np.arange(n)
            img_b = img_a if images != "unpaired" else rng.integers(0, n, n)
            sa = rng.integers(0, len(a), len(a)) if seeds else np.arange(len(a))
            sb = rng.integers(0, len(b), len(b)) if seeds else np.arange(len(b))
            diffs[k] = a[sa][:, img_a].mean() - b[sb][:, img_b].mean()
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        scale = 100 if percent else 1
        return scale * float(a.mean() - b.mean()), scale * float(lo), scale * float(hi)
    return my_bootstrap


def test_bootstrap_reference_is_stage_04s():
    """Stage 04's bootstrap_diff and the check's reference give the same interval on the check's data, to within
    their Monte Carlo error (10,000 replicates each)."""
    ev = importlib.import_module("04_eval")
    a, b = checks.bootstrap_data()
    d, lo, hi = ev.bootstrap_diff(a, b, reps=10_000)
    ref_lo, ref_hi = checks._interval(checks.bootstrap_reference(a, b, 10_000, np.random.default_rng(5)))
    assert abs(lo - ref_lo) < 0.04 * (ref_hi - ref_lo) and abs(hi - ref_hi) < 0.04 * (ref_hi - ref_lo)


def test_bootstrap_mistakes_are_far_from_the_right_interval():
    """The data make each mistake's interval clearly wider or narrower than the right one (bootstrap_data's claim)."""
    (lo, hi), mistakes = checks._bootstrap_intervals()
    ratio = {hint.split(":")[0]: (m_hi - m_lo) / (hi - lo) for hint, (m_lo, m_hi) in mistakes.items()}
    assert len(ratio) == 3 and all(r < 0.7 or r > 1.7 for r in ratio.values()), ratio


@pytest.mark.parametrize("answer, passes, hint", [
    (make_bootstrap(), True, None),
    (make_bootstrap(images="none"), False, "only the seeds"),
    (make_bootstrap(seeds=False), False, "only the images"),
    (make_bootstrap(images="unpaired"), False, "unpaired"),
    (make_bootstrap(percent=True), False, "in points"),
    (lambda a, b, reps, rng: None, False, "returns None"),
], ids=["right", "seeds only", "images only", "unpaired", "percent", "not written"])
def test_bootstrap_check(capsys, answer, passes, hint):
    assert checks.check_bootstrap(answer) is passes
    (line,) = verdicts(capsys)
    assert line.startswith("PASS" if passes else "FAIL") and ("tolerance" in line or "None" in line) and (hint is None or hint in line), line


def test_bootstrap_check_passes_with_other_random_numbers(capsys):
    """The tolerance leaves room for the Monte Carlo error of 2,000 replicates: the right answer passes whatever
    generator it is handed."""
    right = make_bootstrap()
    for seed in range(1, 4):
        assert checks.check_bootstrap(lambda a, b, reps, rng: right(a, b, reps, np.random.default_rng(seed))), verdicts(capsys)


def test_bootstrap_check_refuses_stage_04s(capsys):
    ev = importlib.import_module("04_eval")
    assert checks.check_bootstrap(lambda a, b, reps, rng: ev.bootstrap_diff(a, b, reps)) is False
    assert "04_eval.bootstrap_diff" in verdicts(capsys)[0]
