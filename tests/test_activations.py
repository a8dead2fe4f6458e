"""Stage 01: each activation against its closed form (float64, numpy/math reference), the smooth-backward
switch, continuity of derivatives at 0, the activation swap on a torchvision ResNet-50, and each fast path
(sat_kernels.py) against its plain formula."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import sat_kernels
from conftest import ROOT

X = np.concatenate([np.linspace(-6, 6, 241), [-1000.0, -80.0, -30.0, 30.0, 80.0, 1000.0, 0.0]])


def _sigmoid(z):
    return 0.5 * (1 + np.tanh(z / 2))   # stable for any z


CLOSED_FORMS = {   # independent numpy/math formulas, written from the paper's definitions
    "relu": lambda x: np.maximum(x, 0),
    "softplus": lambda x: np.logaddexp(0, x),
    "psoftplus": lambda x: np.logaddexp(0, 10 * x) / 10,
    "smoothrelu": lambda x: np.where(x >= 0, x - np.log(400 * np.abs(x) + 1) / 400, 0.0),
    "silu": lambda x: x * _sigmoid(x),
    "gelu": lambda x: x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    "elu": lambda x: np.where(x >= 0, x, np.expm1(np.minimum(x, 0))),
}


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_activation_matches_closed_form_float64(acts, name):
    act = acts.make_activation(name).double()
    got = act(torch.tensor(X, dtype=torch.float64)).detach().numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, CLOSED_FORMS[name](X), rtol=1e-12, atol=1e-12)


def test_every_named_activation_is_tested(acts):
    assert set(acts.ACTIVATIONS) == set(CLOSED_FORMS)


@pytest.mark.parametrize("name", ["psoftplus", "smoothrelu", "softplus", "silu", "gelu", "elu"])
def test_smooth_activations_pass_gradcheck(acts, name):
    act = acts.make_activation(name).double()
    x = torch.tensor([-3.0, -0.7, -0.05, 0.03, 0.4, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(act, (x,))


@pytest.mark.parametrize("gpu_form", [False, True])
def test_smoothrelu_alpha_gradient_passes_gradcheck(acts, gpu_form, monkeypatch):
    """SmoothReLU's alpha is learned: its hand-written gradient (summed over the elements) against finite
    differences, together with the input's; in the CPU form and in the GPU form (log1p)."""
    monkeypatch.setattr(sat_kernels, "fused", lambda x: gpu_form)
    x = torch.tensor([-2.0, -0.1, 0.0, 0.002, 0.3, 4.0], dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(30.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sat_kernels._SmoothReLU.apply, (x, alpha))


# On a GPU, Softplus, Parametric Softplus and ELU call PyTorch's fused kernels and SmoothReLU its log1p
# (sat_kernels.fused decides by device).
# Forcing that path here checks it on the CPU: F.elu exactly (1e-12), F.softplus within its threshold error,
# log(1 + exp(-20)) / alpha <= exp(-20) / alpha (2.1e-9 for alpha = 1, 2.1e-10 for alpha = 10); a lower
# threshold (5: error 6.7e-3 at x = 5..6) fails.
FUSED_TOLERANCE = {"softplus": math.exp(-20) / 1, "psoftplus": math.exp(-20) / 10, "elu": 1e-12,
                   "smoothrelu": 1e-12}


@pytest.mark.parametrize("name", list(FUSED_TOLERANCE))
def test_gpu_fused_forms_match_closed_form_float64(acts, name, monkeypatch):
    monkeypatch.setattr(sat_kernels, "fused", lambda x: True)
    act = acts.make_activation(name).double()
    got = act(torch.tensor(X, dtype=torch.float64)).detach().numpy()
    np.testing.assert_allclose(got, CLOSED_FORMS[name](X), rtol=1e-12, atol=FUSED_TOLERANCE[name])
    x = torch.tensor([-3.0, -0.7, -0.05, 0.03, 0.4, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(act, (x,))


def test_smooth_grad_relu_gradcheck_where_relu_is_smooth(acts):
    """Away from the kink (|x| >= 2) ReLU is smooth and sigmoid(10 x) equals its derivative to 2e-9."""
    f = lambda x: acts._ReLUWithSmoothGrad.apply(x, 10.0)  # noqa: E731
    x = torch.tensor([-5.0, -3.0, -2.0, 2.0, 3.5, 7.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,), atol=1e-6)


def test_smooth_grad_relu_forward_is_relu_and_backward_is_sigmoid(acts):
    torch.manual_seed(0)
    x = torch.randn(1000, dtype=torch.float64) * 3
    g_in = torch.randn(1000, dtype=torch.float64)
    m = acts.make_activation("relu", smooth_grad=True).double()
    outs, grads = {}, {}
    for on in (False, True):
        xx = x.clone().requires_grad_(True)
        with acts.smooth_backward(m, on):
            y = m(xx)
        (g,) = torch.autograd.grad(y, xx, g_in)
        outs[on], grads[on] = y.detach(), g
    assert torch.equal(outs[True], torch.relu(x)) and torch.equal(outs[False], torch.relu(x))
    torch.testing.assert_close(grads[True], g_in * torch.sigmoid(10 * x), rtol=0, atol=0)
    torch.testing.assert_close(grads[False], g_in * (x > 0).double(), rtol=0, atol=0)
    assert not torch.equal(grads[True], grads[False])   # switching changes the gradient only


def test_smooth_backward_context_restores_and_reaches_nested_modules(acts):
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(acts.make_activation("relu", smooth_grad=True)))
    sg = model[1][0]
    assert sg.smooth is False
    with acts.smooth_backward(model, True):
        assert sg.smooth is True
    assert sg.smooth is False


def _jump_at_zero(act, h=1e-7):
    x = torch.tensor([-h, h], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(act(x).sum(), x)
    return (g[1] - g[0]).abs().item()


@pytest.mark.parametrize("name", ["softplus", "psoftplus", "smoothrelu", "silu", "gelu", "elu"])
def test_smooth_derivatives_are_continuous_at_zero(acts, name):
    assert _jump_at_zero(acts.make_activation(name).double()) < 1e-3


def test_relu_derivative_jumps_at_zero(acts):
    assert _jump_at_zero(acts.make_activation("relu").double()) == 1.0


def test_swap_in_torchvision_resnet50(acts):
    import torchvision
    model = torchvision.models.resnet50(num_classes=10).eval()
    n_relu = sum(type(m) is nn.ReLU for m in model.modules())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        shape_before = model(x).shape
    replaced = acts.swap_activations(model, "silu")
    assert len(replaced) == n_relu == 17 and "layer1.0.relu" in replaced   # stem + one per Bottleneck
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.SiLU) for m in model.modules()) == n_relu
    with torch.no_grad():
        assert model(x).shape == shape_before == (2, 10)


def test_swap_changes_the_function(acts):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 4)
    before = model(x)
    acts.swap_activations(model, "softplus")
    assert not torch.allclose(model(x), before)


def test_unknown_activation_is_one_clear_line(acts, warm_python):
    with pytest.raises(ValueError, match=r"unknown activation 'swish'; accepted: relu, softplus, psoftplus, smoothrelu, silu, gelu, elu"):
        acts.make_activation("swish")
    r = subprocess.run([sys.executable, "01_activations.py", "--act", "swish"], cwd=ROOT, capture_output=True, text=True,
                       env=warm_python(os.environ))
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert "unknown activation 'swish'" in last and "smoothrelu" in last and "Traceback" not in r.stderr


def test_cli_writes_figure_and_table(tmp_path, warm_python):
    r = subprocess.run([sys.executable, "01_activations.py", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       env=warm_python(os.environ))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "figure2_activations.png").stat().st_size > 10_000
    table = (tmp_path / "activations_table.txt").read_text()
    relu_row = next(line for line in table.splitlines() if line.startswith("relu "))
    assert float(relu_row.split()[2]) == 1.0   # ReLU's derivative jumps by 1 at 0


@pytest.mark.parametrize("name", ["softplus", "psoftplus", "smoothrelu", "elu"])
def test_gpu_forms_run_with_autocast_off(acts, name, monkeypatch):
    """CUDA autocast runs softplus, log1p, exp ... in float32: inside a bf16 network that made each activation
    map float32 (an H200 measured the cost). This file's activations turn autocast off around their own
    forward; the kernels of the GPU form must see it off (spied here with the CPU's autocast)."""
    monkeypatch.setattr(sat_kernels, "fused", lambda x: True)
    seen = []
    for mod, fn in [(torch.nn.functional, "softplus"), (torch.nn.functional, "elu"), (torch, "log1p")]:
        real = getattr(mod, fn)

        def spy(*a, real=real, **k):
            seen.append(torch.is_autocast_enabled("cpu"))
            return real(*a, **k)
        monkeypatch.setattr(mod, fn, spy)
    act = acts.make_activation(name)
    x = torch.randn(4, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        act(x).sum().backward()
    assert seen and not any(seen)


# Each activation is written twice: the plain formula autograd differentiates (stage 01's class, what a user copies)
# and its fast path on sat_kernels.py's kernels (stage 01's Fast* subclass, what make_activation builds). Both must be the same function with the same derivative
# (micrograd's habit: build it both ways in float64, compare forward and backward), at large |x| and at 0 too.
X_AGREE = [-800.0, -50.0, -6.0, -1.0, -0.3, -1e-3, 0.0, 1e-3, 0.3, 1.0, 6.0, 50.0, 800.0]


def _value_and_grads(make):
    """f(x), df/dx and, for SmoothReLU, df/dbeta summed (alpha = beta^2, so the alpha gradient times 2 beta)."""
    torch.manual_seed(0)
    act = make().double()
    x = torch.tensor(X_AGREE, dtype=torch.float64, requires_grad=True)
    g_out = torch.rand(len(X_AGREE), dtype=torch.float64) + 0.5   # a weighted sum, so each element counts
    g_out[X_AGREE.index(0.0)] = 1.0                               # ... and the gradient at 0 is f'(0) itself
    y = act(x)
    params = list(act.parameters())
    grads = torch.autograd.grad(y, [x] + params, g_out)
    return [y.detach()] + list(grads)


@pytest.mark.parametrize("name, make", [
    ("softplus alpha 1", lambda acts, fast: (acts.FastParametricSoftplus if fast else acts.ParametricSoftplus)(1.0)),
    ("psoftplus alpha 10", lambda acts, fast: (acts.FastParametricSoftplus if fast else acts.ParametricSoftplus)(10.0)),
    ("smoothrelu", lambda acts, fast: (acts.FastSmoothReLU if fast else acts.SmoothReLU)(400.0)),
    ("smoothrelu alpha 3", lambda acts, fast: (acts.FastSmoothReLU if fast else acts.SmoothReLU)(3.0)),
    ("elu", lambda acts, fast: acts.FastELU() if fast else acts.ELU())])
def test_plain_formula_and_fast_path_agree_float64(acts, name, make):
    plain = _value_and_grads(lambda: make(acts, False))
    fast = _value_and_grads(lambda: make(acts, True))
    assert len(plain) == len(fast) == (3 if "smoothrelu" in name else 2)   # value, x-gradient (, alpha-gradient)
    for what, p, f in zip(["value", "x-gradient", "alpha-gradient"], plain, fast):
        assert torch.isfinite(p).all() and torch.isfinite(f).all(), what
        torch.testing.assert_close(f, p, rtol=1e-12, atol=1e-14, msg=f"{name}: {what}")
    x = torch.tensor(X_AGREE, dtype=torch.float64)
    if "alpha" in name and "smoothrelu" not in name:   # f'(0) = sigmoid(0) = 1/2 in both
        assert plain[1][x == 0].item() == fast[1][x == 0].item() == 0.5
    if name == "elu":                                  # f'(0) = 1 from both sides, in both
        assert plain[1][x == 0].item() == fast[1][x == 0].item() == 1.0


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_plain_formulas_match_closed_form_and_gradcheck_float64(acts, name):
    act = acts.make_activation(name, fast=False).double()
    got = act(torch.tensor(X, dtype=torch.float64)).detach().numpy()
    np.testing.assert_allclose(got, CLOSED_FORMS[name](X), rtol=1e-12, atol=1e-12)
    x = torch.tensor([-3.0, -0.7, -0.05, 0.03, 0.4, 2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(act, (x,))


@pytest.mark.parametrize("name, plain, fast", [("softplus", "ParametricSoftplus", "FastParametricSoftplus"),
                                               ("psoftplus", "ParametricSoftplus", "FastParametricSoftplus"),
                                               ("smoothrelu", "SmoothReLU", "FastSmoothReLU"), ("elu", "ELU", "FastELU")])
def test_models_are_built_on_the_fast_paths_and_the_plain_formulas_on_request(acts, name, plain, fast):
    """What the stages train with (make_activation's default) is the fast path; fast=False gives the formula a user
    copies; the fast one is an instance of the plain class (RELU_ROLE) with the same parameters."""
    a, b = acts.make_activation(name), acts.make_activation(name, fast=False)
    assert type(a).__name__ == fast and type(b).__name__ == plain and isinstance(a, type(b))
    assert isinstance(a, acts.RELU_ROLE) and a.state_dict().keys() == b.state_dict().keys()
