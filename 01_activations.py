"""Stage 01: ReLU and its smooth replacements, the heart of Smooth Adversarial Training (SAT).
Measured: across x = 0 (+-1e-7) ReLU's derivative jumps by 1, each smooth one's by <= 4e-5 (python 01_activations.py).

Paper: Xie, Tan, Gong, Yuille, Le, "Smooth Adversarial Training", arXiv:2006.14536, Sections 3-4.
The claim: ReLU's derivative is a step function, so the gradients that adversarial training needs (to craft
the attack, and to update the weights) are poor; a smooth activation fixes both.

This file holds, each first as the plain torch formula that autograd differentiates (what to copy):
  * the seven activations the paper compares (Figure 3), selectable by name:
        relu, softplus, psoftplus (Parametric Softplus, alpha=10), smoothrelu, silu, gelu, elu (alpha=1)
  * SmoothGradReLU: "ReLU forward, smooth backward" (Section 3, Table 1), switched on and off at run time
    by smooth_backward(), so stage 03 can give the smooth gradient to the attacker, the optimizer or both;
  * swap_activations(): replace every nn.ReLU inside any model (torchvision ResNet-50 included);
  * at the end, fast paths (same functions, fewer passes over memory) that the modules use by default.

Run it:
    python 01_activations.py            # CPU, ~2 s: draws the paper's Figure 2 and prints a table
Writes:
    runs/01_activations/figure2_activations.png   functions (left) and autograd derivatives (right)
    runs/01_activations/activations_table.txt     f(0), derivative jump at 0, largest gap to ReLU
There is no GPU setting: nothing here is heavy.

Later stages import this file as `importlib.import_module("01_activations")` (a module name that starts
with a digit cannot be written in an `import` statement, but importlib takes any string).
"""
import functools
import math
import os
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

import sat_plumbing

# ----------------------------------------------------------------------------------------------------
# Settings
PSOFTPLUS_ALPHA = 10.0     # Parametric Softplus sharpness alpha (paper: 10); also the smooth-backward alpha
SMOOTHRELU_ALPHA = 400.0   # SmoothReLU alpha at initialisation; learnable (released code: alpha = beta^2, beta0 = 20)
FAST_PATHS = True          # True: the modules run the "Fast paths" at the end (CPU kernels, fused GPU ones);
                           # False: the plain formulas below (same function to ~1e-15 in float64, but slower)
OUT_DIR = os.path.join("runs", "01_activations")   # where the figure and the table go


# ----------------------------------------------------------------------------------------------------
# The smooth activations that PyTorch does not ship. Each forward's last lines are the formula; autograd
# differentiates it. (The first line hands the same function to its fast path, at the end of the file.)

class ParametricSoftplus(nn.Module):
    """Parametric Softplus (paper Section 3):   f(x) = (1/alpha) * log(1 + exp(alpha * x)),
    f'(x) = sigmoid(alpha * x).  alpha -> infinity recovers ReLU; the paper uses alpha = 10; alpha = 1 is
    the plain Softplus of Figure 3."""

    def __init__(self, alpha: float = PSOFTPLUS_ALPHA):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x):
        if FAST_PATHS:
            return softplus_fast(x, self.alpha)
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

    def __init__(self, alpha: float = SMOOTHRELU_ALPHA, learnable: bool = True):
        super().__init__()
        beta = torch.tensor(math.sqrt(alpha))
        self.beta = nn.Parameter(beta) if learnable else None
        if not learnable:
            self.register_buffer("beta_fixed", beta)

    def forward(self, x):
        beta = self.beta if self.beta is not None else self.beta_fixed
        if FAST_PATHS:
            return smoothrelu_fast(x, beta)
        alpha = (beta * beta).to(x.dtype)
        z = x.clamp_min(0)                            # 0 for x < 0; the formula's x for x >= 0
        return z - torch.log1p(alpha * z) / alpha


class ELU(nn.Module):
    """ELU with alpha = 1 (paper Figure 3; the only alpha whose derivative is continuous at 0), the same
    function as nn.ELU(1.0):   f(x) = x for x >= 0, exp(x) - 1 for x < 0;  f'(x) = 1 for x >= 0, exp(x) below."""

    def forward(self, x):
        if FAST_PATHS:
            return elu_fast(x)
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

    def __init__(self, alpha: float = PSOFTPLUS_ALPHA, smooth: bool = False):
        super().__init__()
        self.alpha = float(alpha)
        self.smooth = smooth

    def forward(self, x):
        if self.smooth:
            return _ReLUWithSmoothGrad.apply(x, self.alpha)
        return F.relu(x)

    def extra_repr(self):
        return f"alpha={self.alpha}, smooth={self.smooth}"


@contextmanager
def smooth_backward(model: nn.Module, on: bool):
    """Within the block, every SmoothGradReLU in `model` uses the smooth backward iff `on`.

        with smooth_backward(model, on=True):
            x_adv = pgd(model, x, y, ...)       # the attacker sees sigmoid(10 x) instead of the step function
    The previous settings are restored on exit. A model with no SmoothGradReLU is left as it is.
    """
    mods = [m for m in model.modules() if isinstance(m, SmoothGradReLU)]
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

# name -> (factory, formula for humans). nn.SiLU and nn.GELU are PyTorch's own (fast vectorised kernels);
# the others are this file's; Softplus is Parametric Softplus with alpha = 1.
# GELU: the exact x * Phi(x) (erf form); the released TensorFlow code used the tanh approximation.
ACTIVATIONS = {
    "relu": (lambda: nn.ReLU(), "max(0, x)"),
    "softplus": (lambda: ParametricSoftplus(1.0), "log(1 + exp(x))"),
    "psoftplus": (lambda: ParametricSoftplus(PSOFTPLUS_ALPHA), "(1/10) log(1 + exp(10 x))"),
    "smoothrelu": (lambda: SmoothReLU(SMOOTHRELU_ALPHA), "x - log(400 x + 1)/400 for x>=0, else 0"),
    "silu": (lambda: nn.SiLU(), "x sigmoid(x)"),
    "gelu": (lambda: nn.GELU(), "x Phi(x)"),
    "elu": (lambda: ELU(), "x for x>=0, exp(x)-1 otherwise"),
}


def check_activation_name(name: str) -> str:
    """Return `name` if known, else raise ValueError with one line naming the accepted names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; accepted: {', '.join(ACTIVATIONS)}")
    return name


def make_activation(name: str, smooth_grad: bool = False) -> nn.Module:
    """A fresh activation module by name. `smooth_grad=True` (only for 'relu') gives a SmoothGradReLU,
    whose smooth backward is then switched on and off with `smooth_backward`."""
    check_activation_name(name)
    if smooth_grad:
        if name != "relu":
            raise ValueError(f"smooth_grad applies to 'relu' only, not {name!r} (the others are smooth already)")
        return SmoothGradReLU(PSOFTPLUS_ALPHA)
    return ACTIVATIONS[name][0]()


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


def swap_activations(model: nn.Module, name: str, smooth_grad: bool = False) -> Swapped:
    """Replace every activation module playing ReLU's role in `model` (RELU_ROLE: ReLU, SiLU, GELU, ...,
    never a gate) by a fresh `make_activation(name, smooth_grad)`.

    Returns the qualified names of the replaced modules (e.g. ['layer1.0.relu', ...]) with `.by_type`, so
    the caller can report them; an empty list means nothing was swapped (e.g. a model calling F.relu,
    which no module swap can reach: see functional_activations).

    Works on torchvision models: a ResNet Bottleneck holds ONE nn.ReLU (`self.relu`) and calls it three
    times in its forward; replacing the attribute replaces all three uses. Each replaced module gets its
    own new activation, so a learnable one (SmoothReLU) gets one alpha per replaced module, shared by the
    places that module is called from (as in the paper's code, one alpha per layer's scope).
    """
    check_activation_name(name)
    replaced = Swapped()
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, RELU_ROLE):
                setattr(parent, child_name, make_activation(name, smooth_grad))
                replaced.append(f"{parent_name}.{child_name}" if parent_name else child_name)
                kind = type(child).__name__
                replaced.by_type[kind] = replaced.by_type.get(kind, 0) + 1
    return replaced


# the functional forms of RELU_ROLE (torch.nn.functional.relu, torch.relu, Tensor.relu, ...), by name
FUNCTIONAL_NAMES = {"relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "prelu", "elu", "elu_", "celu", "selu",
                    "gelu", "silu", "mish", "softplus", "hardswish"}


def functional_activations(model: nn.Module, x: torch.Tensor) -> set:
    """Names of the activation functions `model` calls in functional form (F.relu(x), x.relu(), ...) in a
    forward pass on x, outside its activation modules: the calls swap_activations cannot reach
    (torchvision's DenseNet ends with F.relu, Inception v3 and GoogLeNet use nothing else). Seen through a
    TorchFunctionMode, which is shown every torch function call; calls made inside a RELU_ROLE module (an
    nn.ReLU calls F.relu) are its own business."""
    from torch.overrides import TorchFunctionMode
    depth, found = [0], set()

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if depth[0] == 0 and getattr(func, "__name__", "") in FUNCTIONAL_NAMES:
                found.add(func.__name__)
            return func(*args, **(kwargs or {}))

    def enter(*_):
        depth[0] += 1

    def leave(*_):
        depth[0] -= 1
    hooks = [h for m in model.modules() if isinstance(m, RELU_ROLE)
             for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    was_training = model.training
    try:
        with torch.no_grad(), Watch():
            model.eval()(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found


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
    parser = sat_plumbing.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--act", default=None, help=f"show one activation only; one of {', '.join(ACTIVATIONS)}")
    parser.add_argument("--out", default=OUT_DIR, help="output folder")
    args = parser.parse_args(argv)
    if args.act is not None:
        try:
            check_activation_name(args.act)
        except ValueError as e:
            raise sat_plumbing.UserError(str(e))
    sat_plumbing.check_out_dir(args.out)

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


# ----------------------------------------------------------------------------------------------------
# Fast paths (skip on first reading): the same functions as the formulas above, computed faster

# Why hand-written forward and backward passes (torch.autograd.Function) on the CPU: there PyTorch's log1p,
# expm1, F.softplus and F.elu run ~10x slower per element than exp, log and sigmoid, which are
# vectorised (measured: 36-40 ms against 2-6 ms on 4M floats, one thread), and a formula composed of several
# ops makes autograd keep every intermediate for a long backward pass. Each function below is a few
# vectorised passes forward, keeps only its input, and computes its closed-form derivative in one or two
# passes backward: benchmarks/bench_activations.py measures what that buys in a training step. log(1 + u)
# replaces log1p(u): for u = exp(-|z|) <= 1 or u = alpha x >= 0 the absolute error is a few units of the
# floating-point epsilon (tests/test_activations.py holds each function to 1e-12 of its closed form and of
# the plain formula above in float64, and gradcheck checks each backward).
#
# On a GPU the opposite holds: every elementwise op is one pass over memory, so a formula of many ops costs
# many passes, while PyTorch's F.softplus and F.elu are one fused kernel each (measured on an H200,
# ResNet-50 bf16: the functions below cost 1.24-1.40x ReLU's training step there). So on a GPU Softplus,
# Parametric Softplus and ELU call PyTorch's fused kernels (fused() decides, by device).
FUSED_SOFTPLUS_THRESHOLD = 20.0   # F.softplus returns x itself above alpha x > 20: off by log(1+e^-20)/alpha <= 2.1e-9/alpha


def fused(x):
    """True where this file's activations call PyTorch's single fused kernels (any device but the CPU)."""
    return x.device.type != "cpu"


def in_input_dtype(forward):
    """Decorator: run an activation's forward with autocast off, in its input's dtype. CUDA autocast runs
    softplus, log1p, exp, log and reciprocal in float32 (for accuracy in losses and norms), so a bf16
    activation map would come out as float32, then be cast back by the next conv: two extra passes over
    memory and twice the bytes (measured on an H200: F.softplus under autocast cost 1.55x ReLU's step).
    Inside, PyTorch still computes each bf16 element in float32 and rounds only the result, like ReLU or
    SiLU, which autocast leaves in bf16."""
    @functools.wraps(forward)
    def wrapper(x, *args):
        with torch.autocast(x.device.type, enabled=False):
            return forward(x, *args)
    return wrapper


class _Softplus(torch.autograd.Function):
    """f(x) = log(1 + exp(alpha x)) / alpha = (max(z, 0) + log(1 + exp(-|z|))) / alpha with z = alpha x;
    f'(x) = sigmoid(alpha x). exp() only ever sees a number <= 0, so it never overflows (exp(800) is inf
    even in float64), and unlike F.softplus(x, beta) nothing switches to the identity above a threshold."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        z = x * alpha if alpha != 1 else x
        y = z.abs().neg_().exp_().add_(1).log_()       # log(1 + exp(-|z|)), in (0, log 2]
        y.add_(z.clamp_min(0))
        return y.div_(alpha) if alpha != 1 else y

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x * ctx.alpha), None


@in_input_dtype
def softplus_fast(x, alpha: float):
    """ParametricSoftplus: _Softplus above on the CPU, PyTorch's fused F.softplus on a GPU."""
    if fused(x):
        return F.softplus(x, beta=alpha, threshold=FUSED_SOFTPLUS_THRESHOLD)
    return _Softplus.apply(x, alpha)


class _SmoothReLU(torch.autograd.Function):
    """f = z - log(1 + alpha z) / alpha with z = max(x, 0) (0 for x < 0, never negative for x >= 0);
    df/dx = alpha z / (1 + alpha z) = 1 - 1 / (1 + alpha z) (0 for x <= 0);
    df/dalpha = log(1 + alpha z) / alpha^2 - z / (alpha (1 + alpha z)) = (log(1 + alpha z) - df/dx) / alpha^2,
    summed over the elements (one alpha per module). Few passes: addcdiv / addcmul are one kernel each."""

    @staticmethod
    def forward(ctx, x, alpha):
        z = x.clamp_min(0)
        # log(1 + alpha z), kept for the alpha gradient; log1p is one kernel on a GPU but slow on the CPU
        log_term = torch.log1p(z * alpha) if fused(x) else (z * alpha).add_(1).log_()
        ctx.save_for_backward(z, log_term, alpha)
        return torch.addcdiv(z, log_term, alpha, value=-1)

    @staticmethod
    def backward(ctx, grad):
        z, log_term, alpha = ctx.saved_tensors
        inv = torch.addcmul(torch.ones_like(alpha), z, alpha).reciprocal_()   # 1 / (1 + alpha z)
        grad_x = torch.addcmul(grad, grad, inv, value=-1)                     # grad * (1 - inv)
        grad_alpha = None
        if ctx.needs_input_grad[1]:   # sums in float32 at least (bf16 sums of a whole batch lose digits)
            acc = torch.promote_types(grad.dtype, torch.float32)
            total = (grad * log_term).sum(dtype=acc) - grad_x.sum(dtype=acc)
            grad_alpha = (total / alpha.to(acc) ** 2).to(alpha.dtype).reshape(alpha.shape)
        return grad_x, grad_alpha


@in_input_dtype
def smoothrelu_fast(x, beta):
    """SmoothReLU with alpha = beta^2: _SmoothReLU above on every device (its log1p on a GPU)."""
    return _SmoothReLU.apply(x, (beta * beta).to(x.dtype))


class _ELU(torch.autograd.Function):
    """f(x) = x for x >= 0, exp(x) - 1 for x < 0 (alpha = 1) = max(x, 0) + exp(min(x, 0)) - 1;
    f'(x) = exp(min(x, 0)) (1 for x >= 0)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_max(0).exp_().sub_(1).add_(x.clamp_min(0))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x.clamp_max(0).exp_()


@in_input_dtype
def elu_fast(x):
    """ELU: _ELU above on the CPU (nn.ELU's expm1 kernel is slow there), PyTorch's fused F.elu on a GPU."""
    return F.elu(x) if fused(x) else _ELU.apply(x)


if __name__ == "__main__":
    sat_plumbing.run_cli(main)
