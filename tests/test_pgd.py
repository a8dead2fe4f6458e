"""Stage 02: the PGD attack against closed forms, invariants and an independent implementation."""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sat_data
from conftest import ROOT


def tiny_cnn(bn=True):
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else []) + [nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)]
    return nn.Sequential(*layers)


def test_output_in_eps_ball_and_image_box(attack):
    model = tiny_cnn()
    torch.manual_seed(1)
    x = torch.rand(32, 1, 8, 8)
    x[:, :, :2] = 0.0   # pixels at the edges of [0, 1]
    x[:, :, -2:] = 1.0
    y = torch.randint(0, 10, (32,))
    for steps, start in [(1, 0.0), (1, 1.0), (7, 1.0), (7, 0.8)]:
        eps = 0.1
        x_adv = attack.pgd(model, x, y, eps, 0.04, steps, rand_start_prob=start)
        assert (x_adv - x).abs().max() <= eps + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd1_without_random_start_is_fgsm(attack):
    model = tiny_cnn().eval()
    torch.manual_seed(2)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    fgsm = (x + 0.05 * g.sign()).clamp(0, 1)
    assert torch.equal(attack.pgd(model, x, y, 0.05, 0.05, 1, rand_start_prob=0.0), fgsm)


def test_one_step_on_linear_logistic_model_is_the_closed_form_worst_case(attack):
    """f(x) = w.x + b, loss log(1 + exp(-y f(x))) with y = +-1. The worst case in the eps-ball is
    x - eps * y * sign(w). As 2 logits [0, f(x)], cross-entropy with class (y+1)/2 is that logistic loss."""
    torch.manual_seed(3)
    w, b = torch.randn(20), torch.tensor(0.3)

    class Linear2(nn.Module):
        def forward(self, x):
            return torch.stack([torch.zeros(len(x)), x @ w + b], 1)   # logits (B, 2)
    model = Linear2()
    x = 0.3 + 0.4 * torch.rand(50, 20)        # away from the [0, 1] edges
    y_pm = torch.randint(0, 2, (50,)) * 2 - 1  # labels +-1
    x_adv = attack.pgd(model, x, (y_pm + 1) // 2, 0.1, 0.1, 1, rand_start_prob=0.0)
    torch.testing.assert_close(x_adv, x - 0.1 * y_pm[:, None] * w.sign(), rtol=0, atol=1e-7)


def test_attack_raises_the_loss(attack, trained_digits):
    model, _ = trained_digits
    x, y = sat_data.digits_tensors("test")
    torch.manual_seed(0)
    x_adv = attack.pgd(model, x, y, attack.px(64), attack.default_step(attack.px(64), 10), 10)   # its training eps
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 0.5


def test_more_steps_never_raise_robust_accuracy(attack, trained_digits):
    model, _ = trained_digits
    x, y = sat_data.digits_tensors("test")
    eps = attack.px(32)
    accs = []
    for k in [1, 5, 20, 50]:
        torch.manual_seed(0)
        x_adv = attack.pgd(model, x, y, eps, attack.default_step(eps, k), k)   # plain final iterate
        with torch.no_grad():
            accs.append((model(x_adv).argmax(1) == y).float().mean().item())
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    assert accs[0] - accs[-1] > 0.02, accs   # and the extra steps actually do something


@pytest.mark.parametrize("training", [True, False])
def test_no_weight_grads_mode_restored_bn_untouched(attack, training):
    model = tiny_cnn(bn=True)
    model.train(training)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    attack.pgd(model, x, y, 0.1, 0.03, 3)
    attack.pgd_eval(model, x, y, 0.1, 0.03, 3)
    assert all(p.grad is None for p in model.parameters())
    assert model.training is training
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k


def test_works_under_autocast(attack):
    model = tiny_cnn()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = attack.pgd(model, x, y, 0.1, 0.05, 2)
    assert x_adv.dtype == torch.float32 and (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_early_stopping_eval_never_above_plain_pgd(attack, trained_digits):
    model, _ = trained_digits
    x, y = sat_data.digits_tensors("test")
    eps = attack.px(32)
    for k in [1, 10, 40]:
        torch.manual_seed(5)
        plain = (model(attack.pgd(model, x, y, eps, eps / 4, k)).argmax(1) == y)
        torch.manual_seed(5)   # the same random start
        robust = attack.pgd_eval(model, x, y, eps, eps / 4, k) == -1
        assert not (robust & ~plain).any()           # every example robust under eval is robust under plain
        assert robust.float().mean() <= plain.float().mean()


def test_agrees_with_torchattacks(attack, trained_digits):
    import torchattacks   # a runtime dependency (stage 04): a missing install must fail, not skip
    model, _ = trained_digits
    x, y = sat_data.digits_tensors("test")
    eps = attack.px(32)
    torch.manual_seed(0)
    ours = (attack.pgd_eval(model, x, y, eps, eps / 4, 20) == -1).float().mean().item()
    torch.manual_seed(0)
    x_ta = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=20, random_start=True)(x, y)
    with torch.no_grad():
        theirs = (model(x_ta).argmax(1) == y).float().mean().item()
    assert 0.1 < theirs < 0.95          # a model where the comparison means something
    assert abs(ours - theirs) <= 0.04, (ours, theirs)


@pytest.mark.parametrize("kw, msg", [(dict(eps=-0.1), "eps must be >= 0"), (dict(step=0.0), "step must be > 0"),
                                     (dict(steps=0), "steps must be an integer >= 1"), (dict(shift=1.5), "inputs must be pixels in")])
def test_bad_arguments_one_clear_line(attack, kw, msg):
    model = tiny_cnn()
    x, y = torch.rand(4, 1, 8, 8) * kw.get("shift", 1.0), torch.randint(0, 10, (4,))
    args = dict(eps=kw.get("eps", 0.1), step=kw.get("step", 0.01), steps=kw.get("steps", 2))
    for fn in (attack.pgd, attack.pgd_eval):
        with pytest.raises(ValueError, match=msg) as e:
            fn(model, x, y, args["eps"], args["step"], args["steps"])
        assert "\n" not in str(e.value)


def test_cli_rejects_bad_eps():
    r = subprocess.run([sys.executable, "02_pgd.py", "--eps", "-4"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "error: --eps must be a finite number in (0, 255] (pixel units: 4 means 4/255), got -4.0"
