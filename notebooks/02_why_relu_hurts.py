# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Why ReLU hurts: gradient quality
#
# **Learning objectives.** After this notebook you can (1) explain why ReLU's step-function derivative hurts both
# the attacker and the optimizer, (2) measure how stable an input gradient is, (3) write a ReLU whose backward
# pass is smooth (an autograd Function), and (4) read Table 1's "attacker" row as a statement about the attacker's
# strength. **Prerequisites.** Notebook 1 (PGD). **Time.** About 45 minutes with the exercises (an estimate); the cells
# ran in 56 to 147 s on a 2-core CPU that other jobs kept busy (measured: docs/COURSE.md).
#
# The paper's argument (Section 3): adversarial training uses gradients twice, in the **attacker** (the inner max of
# Eq. 1) and in the **optimizer** (the outer min). ReLU's derivative is a step function,
#
# $$\mathrm{ReLU}(x) = \max(0, x), \qquad \mathrm{ReLU}'(x) = \mathbb{1}[x > 0],$$
#
# discontinuous at 0, so a ReLU network's input gradient can jump between nearby inputs. Smooth activations have
# continuous derivatives, for example
#
# $$\text{Parametric Softplus: } f(x) = \tfrac{1}{\alpha}\log\big(1 + e^{\alpha x}\big), \quad f'(x) = \sigma(\alpha x); \qquad
# \text{SiLU: } f(x) = x\,\sigma(x), \quad f'(x) = \sigma(x)\big(1 + x\,(1 - \sigma(x))\big).$$
#
# This notebook draws the paper's Figure 2, measures gradient quality directly on trained digits models, and
# tests the mechanism behind Table 1's "attacker" row: a ReLU network whose forward pass is unchanged but whose
# backward pass uses σ(αx) with α = 10 (the derivative of Parametric Softplus), so that the *same model*
# is attacked with a smoother gradient.
#
# It reuses stage 03's ReLU and SiLU models when they exist, else trains them into `runs/notebooks/`.

# %%
import os, sys
# The repo root holds 01_activations.py: the parent of notebooks/ (the full edition's folder, its working
# directory) and the grandparent of notebooks/student/ (the student edition's). $SAT_REPO_ROOT overrides it.
here = os.getcwd()
ROOT = os.environ.get("SAT_REPO_ROOT") or next((d for d in (os.path.dirname(here), os.path.dirname(os.path.dirname(here)), here)
                                                if os.path.isfile(os.path.join(d, "01_activations.py"))), None)
assert ROOT, "start this notebook from the repo's notebooks/ or notebooks/student/ folder, or set SAT_REPO_ROOT to the repo root"
sys.path[:0] = [ROOT, os.path.join(ROOT, "notebooks")]
import nbsetup as nb   # paths, quick mode, table/figure helpers: notebooks/nbsetup.py
print(f"quick mode: {nb.QUICK}; models trained here go to {os.path.relpath(nb.OUT, ROOT)}/")

# %%
import copy
import torch
import torch.nn.functional as F
import matplotlib.pyplot as plt
acts = nb.stage("01_activations")   # ACTIVATIONS, make_activation, swap_activations, smooth_backward, draw_figure2
attack = nb.stage("02_pgd")         # pgd, px, default_step, EPS_PX
EPS = attack.px(attack.EPS_PX["digits"])   # 64/255

# %% [markdown]
# ## The paper's Figure 2: the functions and their derivatives
#
# Drawn by stage 01's `draw_figure2`; the derivatives come from autograd, not from formulas. The dotted line is
# the backward pass of "ReLU forward, smooth backward". The table is stage 01's `activation_stats`: the value at
# 0, the jump of the derivative across 0 (1 for ReLU, 0 for a smooth function) and the largest distance to ReLU
# on [−4, 4].

# %% tags=["deterministic"]
os.makedirs(nb.OUT, exist_ok=True)
fig_path = os.path.join(nb.OUT, "nb2_figure2.png")
acts.draw_figure2(fig_path)
nb.show_png(fig_path)
rows = []
for name, (_, formula) in acts.ACTIVATIONS.items():
    f0, jump, gap = acts.activation_stats(name)
    rows.append([name, formula, f"{f0:.4f}", f"{jump:.2e}", f"{gap:.4f}"])
f0, jump, gap = acts.activation_stats("relu", smooth_grad=True)
rows.append(["relu, smooth backward", "max(0, x); backward sigmoid(10 x)", f"{f0:.4f}", f"{jump:.2e}", f"{gap:.4f}"])
nb.table(["activation", "f(x)", "f(0)", "jump of f' at 0", "max |f - relu| on [-4, 4]"], rows)

# %% [markdown]
# ## ReLU forward, smooth backward
#
# Stage 01's `SmoothGradReLU` computes $\max(0, x)$ in the forward pass; inside `smooth_backward(model, True)` its
# backward pass returns $\sigma(10x)$ instead of the step function. Forward values never change.

# %% tags=["deterministic"]
z = torch.linspace(-0.4, 0.4, 9, requires_grad=True)
sg = acts.make_activation("relu", smooth_grad=True)
for on in (False, True):
    with acts.smooth_backward(sg, on):   # the switch is read at forward time
        out = sg(z)
    (g,) = torch.autograd.grad(out.sum(), z)
    print(f"smooth backward {str(on):5}  f(z) = {[round(v, 2) for v in out.tolist()]}\n"
          f"{'':22}  f'(z) = {[round(v, 2) for v in g.tolist()]}")

# %% [markdown]
# ## Three gradients
#
# * **ReLU**: the adversarially trained ReLU model (PGD-1, ε = 64/255), its true gradient;
# * **ReLU, smooth backward**: *the same model*, every `nn.ReLU` swapped for a `SmoothGradReLU` (identical logits),
#   its gradient taken with the smooth backward on;
# * **SiLU**: a model trained the same way with SiLU, its true gradient.
#
# The first two share every weight and every forward value, so any difference between them is the gradient
# alone. The SiLU model is a different network (other weights), so comparisons with it mix the activation with
# everything else training did.

# %%
relu, _, _ = nb.adv_model("relu")
silu, _, _ = nb.adv_model("silu")
relu_sg = copy.deepcopy(relu)
swapped = acts.swap_activations(relu_sg, "relu", smooth_grad=True)   # nn.ReLU -> SmoothGradReLU
x, y = nb.test_set(nb.size(200, 50))
with torch.no_grad():
    same = torch.equal(relu(x), relu_sg(x))
print(f"swapped {len(swapped)} ReLU modules ({', '.join(swapped)}); logits identical: {same}")

def input_grad(model, x, y, smooth=False):
    '''d(sum of cross-entropies)/dx, (N, 1, 8, 8). Examples are independent (eval mode), so row i is example i's
    own gradient. smooth=True switches on the smooth backward of the model's SmoothGradReLUs, if it has any.'''
    x = x.clone().requires_grad_(True)
    with acts.smooth_backward(model, smooth):
        loss = F.cross_entropy(model(x), y, reduction="sum")
    return torch.autograd.grad(loss, x)[0]

GRADIENTS = {"ReLU": (relu, False), "ReLU, smooth backward": (relu_sg, True), "SiLU": (silu, False)}

# %% [markdown]
# ### One line through input space
#
# Take one test image $x$ (the correctly classified one with the largest loss), a random corner direction $v \in \{-1, 1\}^{64}$ of the $L_\infty$ ball, and walk along
# $x + t v$ for $t \in [-\epsilon, \epsilon]$. Left: the loss $L(t)$. Right: the directional derivative
# $\nabla_x L(x + t v) \cdot v$, as each gradient reports it. A ReLU network is piecewise linear in its input,
# so its loss is smooth between the points where some unit's input crosses 0 and its derivative jumps at each
# of them. The points are not clipped to [0, 1]: this looks at the function, not at an attack.

# %%
with torch.no_grad():   # the correctly classified test image the ReLU model is least sure of: a visible loss
    logits = relu(x)
    i = F.cross_entropy(logits, y, reduction="none").masked_fill(logits.argmax(1) != y, -1).argmax().item()
torch.manual_seed(0)
v = torch.randint(0, 2, x[:1].shape).float() * 2 - 1        # (1, 1, 8, 8), entries +-1
t = torch.linspace(-EPS, EPS, nb.size(801, 201))
xs = x[i:i + 1] + t.view(-1, 1, 1, 1) * v                   # (T, 1, 8, 8)
ys = y[i:i + 1].repeat(len(t))
fig, (ax_l, ax_d) = plt.subplots(1, 2, figsize=(11, 3.8))
roughness = {}
for name, (model, smooth) in GRADIENTS.items():
    with torch.no_grad():
        loss = F.cross_entropy(model(xs), ys, reduction="none")
    slope = (input_grad(model, xs, ys, smooth) * v).sum((1, 2, 3))
    # largest change of the slope between neighbouring points, relative to the slope's range on the line
    roughness[name] = (slope.diff().abs().max() / (slope.max() - slope.min())).item()
    if name != "ReLU, smooth backward":   # same forward as ReLU: the same loss curve
        ax_l.plot(t * 255, loss, label=name)
    ax_d.plot(t * 255, slope, label=name, lw=1)
ax_l.set(xlabel="t (pixel units, /255)", ylabel="cross-entropy", title="loss along x + t v")
ax_d.set(xlabel="t (pixel units, /255)", ylabel="directional derivative", title="gradient . v along the same line")
for ax in (ax_l, ax_d):
    ax.grid(alpha=0.3); ax.legend(fontsize=8)
nb.show(fig)
for name, r in roughness.items():
    print(f"{name:<22} largest jump between neighbouring points: {100 * r:5.1f}% of the curve's range")

# %% [markdown]
# ### Gradient stability: how much does the gradient change between nearby points?
#
# For each test image, draw $r \sim U(-\rho, \rho)^{64}$ and compare the gradient at $x$ with the gradient at $x + r$:
#
# $$\cos\big(\nabla_x L(x),\, \nabla_x L(x + r)\big) \qquad\text{and}\qquad
# \frac{1}{d}\sum_i \mathbb{1}\Big[\mathrm{sign}\,\partial_i L(x) = \mathrm{sign}\,\partial_i L(x + r)\Big].$$
#
# The second is what PGD actually uses: it steps along the sign. A gradient that keeps its direction over a
# larger radius is a better guide for a step of size ε.

# %%
RHO_PX = nb.size([0.5, 1, 2, 4, 8, 16, 32, 64], [1, 8, 64])
cos = {name: [] for name in GRADIENTS}
agree = {name: [] for name in GRADIENTS}
torch.manual_seed(0)
for rho in RHO_PX:
    r = (torch.rand_like(x) * 2 - 1) * attack.px(rho)
    for name, (model, smooth) in GRADIENTS.items():
        g0 = input_grad(model, x, y, smooth).flatten(1)
        g1 = input_grad(model, x + r, y, smooth).flatten(1)
        cos[name].append(F.cosine_similarity(g0, g1, dim=1, eps=1e-30).mean().item())
        agree[name].append((g0.sign() == g1.sign()).float().mean().item())
fig, (ax_c, ax_s) = plt.subplots(1, 2, figsize=(11, 3.8))
for name in GRADIENTS:
    ax_c.plot(RHO_PX, cos[name], "o-", label=name)
    ax_s.plot(RHO_PX, [100 * a for a in agree[name]], "o-", label=name)
ax_c.set(xscale="log", xlabel="rho (pixel units, /255)", ylabel="mean cosine", title="cos(grad L(x), grad L(x + r))")
ax_s.set(xscale="log", xlabel="rho (pixel units, /255)", ylabel="% of pixels", title="gradient signs that agree")
for ax in (ax_c, ax_s):
    ax.grid(alpha=0.3); ax.legend(fontsize=8)
nb.show(fig)
nb.table(["gradient"] + [f"cos at {p:g}/255" for p in RHO_PX], [[n] + c for n, c in cos.items()], floatfmt="{:.3f}")

# %%
i = RHO_PX.index(8)
order = sorted(GRADIENTS, key=lambda n: -cos[n][i])
print(f"at rho = 8/255 the gradient direction is most stable for {order[0]} (cos {cos[order[0]][i]:.3f}) "
      f"and least for {order[-1]} (cos {cos[order[-1]][i]:.3f})")
d = cos["ReLU, smooth backward"][i] - cos["ReLU"][i]
print(f"same ReLU model, smooth backward minus true gradient: {d:+.3f} in cosine, "
      f"{100 * (agree['ReLU, smooth backward'][i] - agree['ReLU'][i]):+.1f} points of sign agreement")


# %% [markdown]
# ## The attacker row of Table 1: a stronger PGD-1 from the same model?
#
# In Table 1 the smooth backward given to the **attacker** only (the training PGD-1) raised ImageNet robustness
# from 33.0% to 34.5%. The mechanism the paper proposes: a better gradient makes the one-step attacker stronger,
# so the network trains against harder adversarial examples. That can be tested directly, without any training:
# attack the same ReLU model with PGD-1 (step ε) once with its true gradient and once with the smooth backward,
# and measure the accuracy of the ReLU model (unchanged forward) on the two sets of adversarial examples, and
# the loss they reach. Random start as in training (averaged over 3 starts), and without one (FGSM).

# %%
def pgd1(eps, smooth, seed, rand_start_prob):
    '''Stage 02's PGD-1 (step = eps) on the ReLU model; smooth=True crafts it with the smooth backward.
    Returns (accuracy, mean cross-entropy) of the ReLU model (same forward either way) on the result.'''
    torch.manual_seed(seed)
    with acts.smooth_backward(relu_sg, smooth):
        x_adv = attack.pgd(relu_sg, x, y, eps, eps, 1, rand_start_prob)
    with torch.no_grad():
        logits = relu_sg(x_adv)
    return (logits.argmax(1) == y).float().mean().item(), F.cross_entropy(logits, y).item()

SEEDS = range(nb.size(3, 2))
rows, at_training = [], None
for eps_px in nb.size([16, 32, 64], [64]):
    for start, prob, seeds in [("random", 1.0, SEEDS), ("none (FGSM)", 0.0, [0])]:
        res = {s: torch.tensor([pgd1(attack.px(eps_px), s, seed, prob) for seed in seeds]).mean(0) for s in (False, True)}
        rows.append([f"{eps_px}/255", start, 100 * res[False][0].item(), 100 * res[True][0].item(),
                     f"{res[False][1]:.3f}", f"{res[True][1]:.3f}"])
        if eps_px == 64 and prob == 1.0:
            at_training = rows[-1]
nb.table(["eps", "random start", "acc. vs ReLU grad. %", "acc. vs smooth grad. %", "loss, ReLU grad.", "loss, smooth grad."], rows)
acc_r, acc_s, loss_r, loss_s = at_training[2], at_training[3], float(at_training[4]), float(at_training[5])
verdict = "stronger" if acc_s < acc_r - 1 else "weaker" if acc_s > acc_r + 1 else "about as strong (within 1 point)"
print(f"at the training setting (PGD-1, eps 64/255, random start) the smooth-backward attacker is {verdict}: "
      f"accuracy {acc_r:.1f}% -> {acc_s:.1f}%, loss {loss_r:.3f} -> {loss_s:.3f}")

# %% [markdown]
# How to read this: if the smooth backward gives the one-step attacker lower accuracy and higher loss on the
# *same* model, the attacker row of Table 1 has its mechanism on this model too: training on those examples is
# training against a stronger inner max. How much of that turns into robustness after training is a separate
# question (notebook 3 trains the "both" variant), and the gradient-stability numbers above are one model
# and one seed: treat small differences as noise.
#
# ## Exercises
#
# 1. **The smoothness knob.** Every `SmoothGradReLU` has an `alpha` attribute (10 by default); its backward is
#    σ(αx), which tends to the step function as α → ∞. Repeat the PGD-1 experiment at 64/255 for α = 1, 3, 10, 30,
#    100. Is there a best α on this model?
# 2. **How often are units near the kink?** σ(10z) differs from the step function by more than 0.27 only when
#    |z| < 0.1. Using forward hooks on the `SmoothGradReLU` modules of `relu_sg`, measure the share of unit inputs
#    with |z| < 0.1 on the test images, per layer.
# 3. **Does the edge last?** Repeat the attacker comparison with PGD-k for k = 1, 2, 5, 10, 20 (stage 02's step
#    rule) at 64/255. Does the smooth backward still matter when the attacker takes many steps?
# 4. **Write the smooth backward.** Fill in `MyReLUSmoothGrad`, a `torch.autograd.Function` whose forward is ReLU's
#    and whose backward multiplies the incoming gradient by σ(αx) (Parametric Softplus's derivative) instead of
#    ReLU's step. The check compares its outputs and gradients with max(0, z) and σ(αz) on 201 points of [−1, 1]
#    in float64, z = 0 exactly among them (where ReLU's step and σ(0) = 0.5 disagree), for α = 10 and α = 3, and
#    prints PASS, or FAIL with a hint; stage 01's own Function does not count as an answer.

# %%
class MyReLUSmoothGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        # your code: keep what backward needs (ctx.save_for_backward(x), ctx.alpha = alpha), return ReLU of x
        return None

    @staticmethod
    def backward(ctx, grad_out):
        # your code: the gradient for x, and None for alpha (a plain number, no gradient)
        return None, None


import checks   # notebooks/checks.py: each exercise's check, PASS or FAIL with a hint
passed = checks.check_smooth_relu(MyReLUSmoothGrad)   # True or False, as printed

# %% [markdown] tags=["solution"]
# ## Solutions

# %% tags=["solution"]
# 1. alpha sweep: set alpha on every SmoothGradReLU of the swapped model, attack with the smooth backward on
sg_modules = [m for m in relu_sg.modules() if isinstance(m, acts.SmoothGradReLU)]
true_acc = 100 * torch.tensor([pgd1(EPS, False, s, 1.0)[0] for s in SEEDS]).mean().item()
print(f"true ReLU gradient: {true_acc:.1f}%")
for alpha in nb.size([1, 3, 10, 30, 100], [1, 10]):
    for m in sg_modules:
        m.alpha = float(alpha)
    acc = 100 * torch.tensor([pgd1(EPS, True, s, 1.0)[0] for s in SEEDS]).mean().item()
    print(f"alpha = {alpha:>3}: accuracy after smooth-backward PGD-1 {acc:.1f}%")
for m in sg_modules:
    m.alpha = acts.PSOFTPLUS_ALPHA   # back to 10

# %% [markdown] tags=["solution"]
# Small α smooths the gradient so much that it stops describing the ReLU network (σ(x) is far from the step
# function at |x| ~ 1), large α gives back the step function; the best α, if there is one, sits between.

# %% tags=["solution"]
# 2. share of SmoothGradReLU inputs near the kink, per layer
names = dict((m, n) for n, m in relu_sg.named_modules())
near = {}
hooks = [m.register_forward_hook(lambda mod, inp, out: near.setdefault(names[mod], []).append((inp[0].abs() < 0.1).float().mean().item()))
         for m in sg_modules]
with torch.no_grad():
    relu_sg(x)
for h in hooks:
    h.remove()
for name, shares in near.items():
    print(f"{name:<22} {100 * sum(shares) / len(shares):5.1f}% of unit inputs within 0.1 of the kink")


# %% [markdown] tags=["solution"]
# Every such unit is one whose derivative the smooth backward changes substantially; the more there are, the
# more the two gradients can differ.

# %% tags=["solution"]
# 3. the comparison with more attack steps (random start, same seeds for both gradients)
def pgd_k(k, smooth, seed):
    torch.manual_seed(seed)
    with acts.smooth_backward(relu_sg, smooth):
        x_adv = attack.pgd(relu_sg, x, y, EPS, attack.default_step(EPS, k), k)
    return nb.accuracy(relu_sg, x_adv, y)

diffs = {}
for k in nb.size([1, 2, 5, 10, 20], [1, 5]):
    a_r, a_s = (100 * sum(pgd_k(k, s, seed) for seed in SEEDS) / len(SEEDS) for s in (False, True))
    diffs[k] = a_s - a_r
    print(f"PGD-{k:<3} accuracy vs ReLU gradient {a_r:5.1f}%   vs smooth backward {a_s:5.1f}%   difference {a_s - a_r:+.1f}")
k1, kn = min(diffs), max(diffs)
print(f"difference at PGD-{k1}: {diffs[k1]:+.1f} points; at PGD-{kn}: {diffs[kn]:+.1f} points")

# %% [markdown] tags=["solution"]
# Two readings, depending on what the cell prints. If the difference shrinks with k, the smooth gradient mainly
# helps the *one-step* attacker, the one used in training, which is the setting of Table 1's attacker row. If it
# persists at many steps, the smooth backward is also the better *evaluation* attacker for this ReLU model: PGD
# with the true gradient then overstates the model's robustness, a mild form of the gradient masking that
# notebooks 3 and 4 look at. Either way the reported robustness of the ReLU model must come from the strongest
# attack available, not from its own gradient alone.

# %% [markdown] tags=["solution"]
# **4.** The forward keeps x (the input, not the output) for the backward and returns ReLU's value; the backward
# ignores ReLU's derivative and multiplies the incoming gradient by σ(αx), with the α forward was given. The check
# passes, with 0.500 × the incoming gradient at z = 0: an autograd Function whose backward is not its forward's
# derivative, on purpose.

# %% tags=["solution"]
class MyReLUSmoothGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out * torch.sigmoid(ctx.alpha * x), None


passed = checks.check_smooth_relu(MyReLUSmoothGrad)   # True or False, as printed

# %% tags=["solution"]
nb.stamp()   # the answer key's stamp: the code these outputs came from (tests/test_notebooks.py checks it)
