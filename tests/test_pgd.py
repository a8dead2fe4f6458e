"""Stage 02: the PGD attack against closed forms, invariants and an independent implementation."""
import os
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


def test_weights_need_no_grad_during_the_attack_and_get_their_flags_back(attack):
    """pgd switches the weights' requires_grad off while it attacks (a compiled backward would otherwise compute
    their gradients) and restores each flag as it was: one frozen by the user stays frozen, also after an error."""
    model = tiny_cnn(bn=True)
    params = list(model.parameters())
    params[0].requires_grad_(False)                      # the user's own choice, e.g. a frozen first layer
    before = [p.requires_grad for p in params]
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append([p.requires_grad for p in params]))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    attack.pgd(model, x, y, 0.1, 0.03, 2)
    assert seen and all(not any(flags) for flags in seen)
    assert [p.requires_grad for p in params] == before
    with pytest.raises(IndexError):                      # a label out of range fails inside the attack
        attack.pgd(model, x, torch.full((8,), 99), 0.1, 0.03, 2)
    assert [p.requires_grad for p in params] == before


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
                                     (dict(steps=0), "steps must be an integer >= 1")])
def test_bad_arguments_one_clear_line(attack, kw, msg):
    model = tiny_cnn()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    args = dict(eps=kw.get("eps", 0.1), step=kw.get("step", 0.01), steps=kw.get("steps", 2))
    for fn in (attack.pgd, attack.pgd_eval):
        with pytest.raises(ValueError, match=msg) as e:
            fn(model, x, y, args["eps"], args["step"], args["steps"])
        assert "\n" not in str(e.value)


def test_normalised_inputs_are_refused_where_data_enters(attack):
    """The pixel-range check reads the tensor (a GPU sync), so it left pgd and lives in check_pixels, which
    an evaluation or a notebook calls once on its data; pixels in [0, 1] pass through unchanged."""
    x = torch.rand(4, 1, 8, 8)
    assert attack.check_pixels(x) is x
    for bad in (x * 1.5, (x - 0.5) / 0.25):   # above 1; normalised with mean 0.5, std 0.25
        with pytest.raises(ValueError, match="inputs must be pixels in") as e:
            attack.check_pixels(bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("eps, step", [(4, 4), (4, 1), (0.1, 2), (float("inf"), 0.01)])
def test_eps_in_pixels_is_refused_with_a_hint(attack, eps, step):
    """pgd(model, x, y, 4, 4, 1): eps in pixels, px() forgotten, would attack the whole pixel range."""
    model = tiny_cnn()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    for fn in (attack.pgd, attack.pgd_eval):
        with pytest.raises(ValueError, match=r"eps and step are in \[0, 1\] units: use px\(4\) for 4/255") as e:
            fn(model, x, y, eps, step, 1)
        assert "\n" not in str(e.value)
    assert attack.pgd(model, x, y, 1.0, 1.0, 1).shape == x.shape   # the whole range, asked for in [0, 1] units


def test_pgd_needs_nothing_but_torch(attack):
    """pgd is what a reader copies: the only module-level names its code uses are torch and F."""
    own = {n for n, v in vars(attack).items() if not n.startswith("__")} - {"torch", "F"}
    assert not own & set(attack.pgd.__code__.co_names), own & set(attack.pgd.__code__.co_names)


def test_no_gpu_sync_in_pgd(attack, monkeypatch):
    """pgd reads no tensor value of its inputs: only the random-start coin (a CPU number) is read."""
    seen = []
    real = torch.Tensor.item

    def spy(t):
        seen.append(t.device.type)
        return real(t)
    monkeypatch.setattr(torch.Tensor, "item", spy)
    monkeypatch.setattr(torch, "aminmax", lambda *a, **k: pytest.fail("pgd read the input's range"))
    model = tiny_cnn()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    attack.pgd(model, x, y, 0.1, 0.05, 2, rand_start_prob=0.5)
    assert seen == ["cpu"]   # the coin


def test_cli_rejects_bad_eps(warm_python):
    r = subprocess.run([sys.executable, "02_pgd.py", "--eps", "-4"], cwd=ROOT, capture_output=True, text=True,
                       env=warm_python(os.environ))
    assert r.returncode == 2 and r.stderr.strip() == "error: --eps must be a finite number in (0, 255] (pixel units: 4 means 4/255), got -4.0"


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_quiet_hides_the_training_progress_bar(tmp_path, quiet, warm_python):
    """--quiet: no progress bar while the standard model trains; the attack table still prints.
    SAT_SMOKE=1 shrinks the training to two steps (sat_smoke.smoke_settings)."""
    env = warm_python(dict(os.environ, SAT_SMOKE="1"))
    r = subprocess.run([sys.executable, "02_pgd.py", "--steps", "1", "--out", str(tmp_path)] + ["--quiet"] * quiet,
                       cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "robust acc" in r.stdout and "PGD-1 " in r.stdout
    assert ("epoch 1/1" in r.stderr) is not quiet, r.stderr
