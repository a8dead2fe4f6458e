"""Stage 01's fast paths, hand-written kernels: a reader of the paper may skip all of it; the formulas are in 01.

Parametric Softplus, SmoothReLU and ELU computed in fewer passes over memory. Their formulas are the plain torch
expressions in 01_activations.py, which autograd differentiates and a user copies.

01_activations.make_activation builds its modules on these kernels (FastParametricSoftplus, FastSmoothReLU,
FastELU there) unless asked for the plain formulas (fast=False); tests/test_activations.py holds both to 1e-12 in
float64, in value and in every gradient, and gradchecks each backward below.
"""
import functools

import torch
import torch.nn.functional as F

# Why hand-written forward and backward passes (torch.autograd.Function) on the CPU: there PyTorch's log1p,
# expm1, F.softplus and F.elu run ~10x slower per element than exp, log and sigmoid, which are
# vectorised (measured when this was written: 36-40 ms against 2-6 ms on 4M floats, one thread; NOT confirmed with
# torch 2.14.1 on 2026-12-06, where notebook 5's exercise 4 timed F.softplus at 48.2 ms against 48.0 for
# _Softplus below, and a second, loaded, run at 9.9 against 30.5 ms: to be measured again with
# benchmarks/bench_activations.py before the choice is kept), and a formula composed of several
# ops makes autograd keep every intermediate for a long backward pass. Each function below is a few
# vectorised passes forward, keeps only its input, and computes its closed-form derivative in one or two
# passes backward: benchmarks/bench_activations.py measures what that buys in a training step. log(1 + u)
# replaces log1p(u): for u = exp(-|z|) <= 1 or u = alpha x >= 0 the absolute error is a few units of the
# floating-point epsilon (tests/test_activations.py holds each function to 1e-12 of its closed form and of
# stage 01's plain formula in float64, and gradcheck checks each backward).
#
# On a GPU the opposite holds: every elementwise op is one pass over memory, so a formula of many ops costs
# many passes, while PyTorch's F.softplus and F.elu are one fused kernel each (measured on an H200,
# ResNet-50 bf16: the functions below cost 1.24-1.40x ReLU's training step there). So on a GPU Softplus,
# Parametric Softplus and ELU call PyTorch's fused kernels (fused() decides, by device).
FUSED_SOFTPLUS_THRESHOLD = 20.0   # F.softplus returns x itself above alpha x > 20: off by log(1+e^-20)/alpha <= 2.1e-9/alpha


def fused(x):
    """True where the fast activations call PyTorch's single fused kernels (any device but the CPU)."""
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
