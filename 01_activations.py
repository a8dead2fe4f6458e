"""Stage 01: ReLU and its smooth replacements, the heart of Smooth Adversarial Training (SAT).
Measured: across x = 0 (+-1e-7) ReLU's derivative jumps by 1, each smooth one's by <= 4e-5 (python 01_activations.py).

Paper: Xie, Tan, Gong, Yuille, Le, "Smooth Adversarial Training", arXiv:2006.14536, Sections 3-4.
The claim: ReLU's derivative is a step function, so the gradients that adversarial training needs (to craft
the attack, and to update the weights) are poor; a smooth activation fixes both.

This file holds, each as the plain torch formula that autograd differentiates (what to copy: each class runs
pasted under the torch imports, tests/test_copy_contract.py):
  * the seven activations the paper compares (Figure 3), selectable by name:
        relu, softplus, psoftplus (Parametric Softplus, alpha=10), smoothrelu, silu, gelu, elu (alpha=1)
  * SmoothGradReLU: "ReLU forward, smooth backward" (Section 3, Table 1), switched on and off at run time
    by smooth_backward(), so stage 03 can give the smooth gradient to the attacker, the optimizer or both;
  * swap_activations(): replace every nn.ReLU inside any model (torchvision ResNet-50 included) by
    make_activation's modules, which compute the same functions with sat_kernels.py's hand-written kernels.

Run it:
    python 01_activations.py            # CPU, ~2 s: draws the paper's Figure 2 and prints a table (no GPU setting:
                                        # nothing here is heavy)
Writes:
    runs/01_activations/figure2_activations.png   functions (left) and autograd derivatives (right)
    runs/01_activations/activations_table.txt     f(0), derivative jump at 0, largest gap to ReLU
Later stages import this file as `importlib.import_module("01_activations")` (a module name that starts
with a digit cannot be written in an `import` statement, but importlib takes any string).
"""
import math
import os
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

import sat_kernels
# Settings
import sat_cli
# Settings
PSOFTPLUS_ALPHA = 10.0     # Parametric Softplus sharpness alpha (paper: 10); also the smooth-backward alpha
SMOOTHRELU_ALPHA = 400.0   # SmoothReLU alpha at initialisation; learnable (released code: alpha = beta^2, beta0 = 20)
# (the classes below repeat these values as literal defaults, so that each class can be copied on its own)
OUT_DIR = os.path.join("runs", "01_activations")   # where the figure and the table go


# ----------------------------------------------------------------------------------------------------
# The smooth activations that PyTorch does not ship. Each forward is the formula; autograd differentiates it.

class ParametricSoftplus(nn.Module):
    """Parametric Softplus (paper Section 3):   f(x) = (1/alpha) * log(1 + exp(alpha * x)),
    f'(x) = sigmoid(alpha * x).  alpha -> infinity recovers ReLU; the paper uses alpha = 10; alpha = 1 is
    the plain Softplus of Figure 3."""

    def __init__(self, alpha: float = 10.0):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x):
        # log(1 + e^z) = logaddexp(z, 0) = max(z, 0) + log(1 + e^-|z|): never overflows, where the literal
        # formula does (exp(800) is inf even in float64); f'(0) = 1/2 exactly
        z = self.alpha * x
        return torch.logaddexp(z, torch.zeros_like(z)) / self.alpha

    def extra_repr(self):
        return f"alpha={self.alpha}"


class SmoothReLU(nn.Module):
    """SmoothReLU (paper Section 4):
        f(x) = x - (1/alpha) * log(alpha * x + 1)   for x >= 0,
        f(x) = 0                                      for x <  0,
        f'(x) = alpha x / (alpha x + 1) for x >= 0, so f'(0) = 0 from both sides: the derivative is continuous.
    alpha is learnable, one scalar per module, as in the paper's released code, which stores beta and uses
    alpha = beta^2 (always positive) with beta initialised to 20, i.e. alpha = 400 at the start.
    """

    def __init__(self, alpha: float = 400.0, learnable: bool = True):
        super().__init__()
        beta = torch.tensor(math.sqrt(alpha))
        self.beta = nn.Parameter(beta) if learnable else None
        if not learnable:
            self.register_buffer("beta_fixed", beta)

    def forward(self, x):
        beta = self.beta if self.beta is not None else self.beta_fixed
        alpha = (beta * beta).to(x.dtype)
        z = x.clamp_min(0)                            # 0 for x < 0; the formula's x for x >= 0
        return z - torch.log1p(alpha * z) / alpha


class ELU(nn.Module):
    """ELU with alpha = 1 (paper Figure 3; the only alpha whose derivative is continuous at 0), the same
    function as nn.ELU(1.0):   f(x) = x for x >= 0, exp(x) - 1 for x < 0;  f'(x) = 1 for x >= 0, exp(x) below."""

    def forward(self, x):
        # clamp_max: exp(x) of the branch not taken must not overflow (0 * inf is NaN in the backward pass)
        return torch.where(x >= 0, x, torch.expm1(x.clamp_max(0)))


# ----------------------------------------------------------------------------------------------------
# "ReLU forward, smooth backward" (paper Section 3, Table 1)

class _ReLUWithSmoothGrad(torch.autograd.Function):
    """y = max(0, x) forward; dL/dx = dL/dy * sigmoid(alpha * x) backward (Parametric Softplus's derivative).
    This is a deliberate lie to autograd: the backward is not the derivative of the forward. It lets the
    paper ask "what if only the gradient were smooth?" while every forward value stays exactly ReLU's.
    No plain formula can say this, hence a hand-written autograd Function.
    """

    @staticmethod
    def forward(ctx, x, alpha: float):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out * torch.sigmoid(ctx.alpha * x), None   # no gradient for alpha


class SmoothGradReLU(nn.Module):
    """A ReLU whose backward pass can be switched to the smooth one at run time.

    `self.smooth` (bool) is read at *forward* time: the autograd graph built by a forward pass remembers
    which backward it will use. So set the switch (see `smooth_backward`) before the forward pass whose
    gradient you want smooth: before crafting the attack for the paper's "attacker" row, before the
    training forward pass for its "optimizer" row.
    """

    def __init__(self, alpha: float = 10.0, smooth: bool = False):
        super().__init__()
        self.alpha = float(alpha)
        self.smooth = smooth

    def forward(self, x):
        if self.smooth:
            return _ReLUWithSmoothGrad.apply(x, self.alpha)
        return F.relu(x)

    def extra_repr(self):
        return f"alpha={self.alpha}, smooth={self.smooth}"


def switchable_relus(model: nn.Module) -> list:
    """The SmoothGradReLUs of `model` (empty: nothing for smooth_backward to switch)."""
    return [m for m in model.modules() if isinstance(m, SmoothGradReLU)]


@contextmanager
def smooth_backward(model: nn.Module, on: bool):
    """Within the block, every SmoothGradReLU in `model` uses the smooth backward iff `on`.

        with smooth_backward(model, on=True):
            x_adv = pgd(model, x, y, ...)       # the attacker sees sigmoid(10 x) instead of the step function
    The previous settings are restored on exit. A model with no SmoothGradReLU is left as it is.
    """
    mods = switchable_relus(model)
    before = [m.smooth for m in mods]
    for m in mods:
        m.smooth = on
    try:
        yield model
    finally:
        for m, b in zip(mods, before):
            m.smooth = b


# ----------------------------------------------------------------------------------------------------
# Selecting an activation by name, and swapping it into any model

# name -> (factory, formula for humans); factory(fast) builds the module, on sat_kernels' kernels if fast (the Fast*
# classes below) or as the plain formula. nn.SiLU and nn.GELU are PyTorch's own (fast vectorised kernels); the
# others are this file's; Softplus is Parametric Softplus with alpha = 1.
# GELU: the exact x * Phi(x) (erf form); the released TensorFlow code used the tanh approximation.
ACTIVATIONS = {
    "relu": (lambda fast: nn.ReLU(), "max(0, x)"),
    "softplus": (lambda fast: (FastParametricSoftplus if fast else ParametricSoftplus)(1.0), "log(1 + exp(x))"),
    "psoftplus": (lambda fast: (FastParametricSoftplus if fast else ParametricSoftplus)(PSOFTPLUS_ALPHA), "(1/10) log(1 + exp(10 x))"),
    "smoothrelu": (lambda fast: (FastSmoothReLU if fast else SmoothReLU)(SMOOTHRELU_ALPHA), "x - log(400 x + 1)/400 for x>=0, else 0"),
    "silu": (lambda fast: nn.SiLU(), "x sigmoid(x)"),
    "gelu": (lambda fast: nn.GELU(), "x Phi(x)"),
    "elu": (lambda fast: FastELU() if fast else ELU(), "x for x>=0, exp(x)-1 otherwise"),
}


def check_activation_name(name: str) -> str:
    """Return `name` if known, else raise ValueError with one line naming the accepted names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; accepted: {', '.join(ACTIVATIONS)}")
    return name


def make_activation(name: str, smooth_grad: bool = False, fast: bool = True) -> nn.Module:
    """A fresh activation module by name. `smooth_grad=True` (only for 'relu') gives a SmoothGradReLU,
    whose smooth backward is then switched on and off with `smooth_backward`. fast=True (what the stages use):
    the same function computed by sat_kernels.py's hand-written kernels; fast=False: the plain formula above."""
    check_activation_name(name)
    if smooth_grad:
        if name != "relu":
            raise ValueError(f"smooth_grad applies to 'relu' only, not {name!r} (the others are smooth already)")
        return SmoothGradReLU(PSOFTPLUS_ALPHA)
    return ACTIVATIONS[name][0](fast)


# Fast paths (skip on first reading): the formulas above, computed by sat_kernels.py's hand-written kernels (fewer
# passes over memory on the CPU, PyTorch's fused kernels on a GPU). The same parameters, so the same checkpoints;
# tests/test_activations.py holds each to its formula in float64, in value and in every gradient.
class FastParametricSoftplus(ParametricSoftplus):
    def forward(self, x):
        return sat_kernels.softplus_fast(x, self.alpha)


class FastSmoothReLU(SmoothReLU):
    def forward(self, x):
        return sat_kernels.smoothrelu_fast(x, self.beta if self.beta is not None else self.beta_fixed)


class FastELU(ELU):
    def forward(self, x):
        return sat_kernels.elu_fast(x)


# The modules that play ReLU's role: the network's pointwise nonlinearity, whatever a model was built with
# (ResNets: ReLU; EfficientNet, RegNet's SE: SiLU; ConvNeXt, ViT: GELU; MobileNetV2: ReLU6; MobileNetV3:
# Hardswish and ReLU), and this file's own ones (so a model can be swapped again). NOT in it: Sigmoid and
# Hardsigmoid, which gate channels in squeeze-and-excitation blocks (a multiplicative scale in (0, 1), not
# a nonlinearity in the network's path; replacing a gate by an unbounded activation breaks the block).
# ReLU6 and Hardswish ARE swapped: they are the main nonlinearity of the MobileNets, and both are the kind of
# function SAT removes (ReLU6's derivative jumps at 0 and 6, Hardswish's at -3 and 3); their bounds and
# pieces exist for cheap fixed-point inference, which adversarial training does not need.
RELU_ROLE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
             nn.Softplus, nn.Hardswish, ParametricSoftplus, SmoothReLU, ELU, SmoothGradReLU)


class Swapped(list):
    """What swap_activations replaced: the modules' qualified names (a list), and `.by_type`, how many of
    each old type (e.g. {'SiLU': 49} for EfficientNet-B0)."""

    def __init__(self):
        super().__init__()
        self.by_type = {}


def swap_activations(model: nn.Module, name: str, smooth_grad: bool = False, kinds: tuple = RELU_ROLE) -> Swapped:
    """Replace every activation module playing ReLU's role in `model` (RELU_ROLE: ReLU, SiLU, GELU, ...,
    never a gate; or only those of the types `kinds`) by a fresh `make_activation(name, smooth_grad)`.

    Returns the qualified names of the replaced modules (e.g. ['layer1.0.relu', ...]) with `.by_type`, so
    the caller can report them; an empty list means nothing was swapped (e.g. a model calling F.relu,
    which no module swap can reach: see sat_models.functional_activations).

    Works on torchvision models: a ResNet Bottleneck holds ONE nn.ReLU (`self.relu`) and calls it three
    times in its forward; replacing the attribute replaces all three uses. Each replaced module gets its
    own new activation, so a learnable one (SmoothReLU) gets one alpha per replaced module, shared by the
    places that module is called from (as in the paper's code, one alpha per layer's scope).
    """
    check_activation_name(name)
    replaced = Swapped()
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, kinds):
                setattr(parent, child_name, make_activation(name, smooth_grad))
                replaced.append(f"{parent_name}.{child_name}" if parent_name else child_name)
                kind = type(child).__name__
                replaced.by_type[kind] = replaced.by_type.get(kind, 0) + 1
    return replaced


# ----------------------------------------------------------------------------------------------------
# Figure 2 of the paper and a small table

def activation_stats(name: str, smooth_grad: bool = False, h: float = 1e-7):
    """(f(0), jump of the autograd derivative across 0, max |f - relu| on [-4, 4]), all in float64.
    The jump is f'(+h) - f'(-h): ~1 for ReLU (its derivative steps from 0 to 1), ~0 for smooth ones.
    """
    act = make_activation(name, smooth_grad).double()
    if smooth_grad:
        act.smooth = True
    pts = torch.tensor([0.0, -h, h], dtype=torch.float64, requires_grad=True)
    y = act(pts)
    (g,) = torch.autograd.grad(y.sum(), pts)
    grid = torch.linspace(-4, 4, 8001, dtype=torch.float64)
    with torch.no_grad():
        gap = (act(grid) - grid.clamp_min(0)).abs().max().item()
    return y[0].item(), (g[2] - g[1]).item(), gap


def draw_figure2(path: str):
    """Functions and their derivatives on [-4, 4]. Derivatives come from autograd, not from formulas."""
    import matplotlib.pyplot as plt
    x = torch.linspace(-4, 4, 1601, dtype=torch.float64, requires_grad=True)
    fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in ACTIVATIONS:
        act = make_activation(name).double()
        y = act(x)
        (dy,) = torch.autograd.grad(y.sum(), x)
        style = dict(lw=2.4, color="k") if name == "relu" else dict(lw=1.4)
        ax_f.plot(x.detach(), y.detach(), label=name, **style)
        ax_d.plot(x.detach(), dy, label=name, **style)
    # the backward pass of "ReLU forward, smooth backward" = derivative of Parametric Softplus
    sg = make_activation("relu", smooth_grad=True).double()
    sg.smooth = True
    (dsg,) = torch.autograd.grad(sg(x).sum(), x)
    ax_d.plot(x.detach(), dsg, "k:", lw=1.6, label="relu, smooth backward")
    ax_f.set(title="activation f(x)", xlabel="x", ylim=(-1.5, 4))
    ax_d.set(title="derivative f'(x) (autograd)", xlabel="x", ylim=(-0.2, 1.3))
    for ax in (ax_f, ax_d):
        ax.grid(alpha=0.3)
        ax.axvline(0, color="gray", lw=0.5)
    ax_d.legend(fontsize=8, loc="upper left")
    fig.suptitle("ReLU and its smooth approximations (cf. SAT paper, Figure 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = sat_cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--act", default=None, help=f"show one activation only; one of {', '.join(ACTIVATIONS)}")
    parser.add_argument("--out", default=OUT_DIR, help="output folder")
    args = parser.parse_args(argv)
    if args.act is not None:
        try:
            check_activation_name(args.act)
        except ValueError as e:
            raise sat_cli.UserError(str(e))
    sat_cli.check_out_dir(args.out)

    import matplotlib
    matplotlib.use("Agg")   # scripts only save figures; notebooks keep their own inline backend
    rows = [(n, False) for n in ACTIVATIONS if args.act in (None, n)]
    if args.act in (None, "relu"):
        rows.append(("relu", True))
    lines = [f"{'activation':<24} {'f(0)':>10} {'jump of f_prime at 0':>21} {'max|f-relu| on [-4,4]':>22}  formula"]
    for name, sg in rows:
        f0, jump, gap = activation_stats(name, sg)
        label = name + (" (smooth backward)" if sg else "")
        formula = "max(0,x); backward sigmoid(10x)" if sg else ACTIVATIONS[name][1]
        lines.append(f"{label:<24} {f0:>10.4f} {jump:>21.2e} {gap:>22.4f}  {formula}")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "activations_table.txt"), "w") as f:
        f.write(table + "\n")
    fig_path = os.path.join(args.out, "figure2_activations.png")
    draw_figure2(fig_path)
    print(f"wrote {fig_path}")


if __name__ == "__main__":
    sat_cli.run_cli(main)
