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
# # 1. Adversarial examples and PGD
#
# **Learning objectives.** After this notebook you can (1) state the $L_\infty$ threat model and the min-max objective
# (Eq. 1), (2) write PGD and check it against stage 02's, (3) read robust accuracy against the number of steps
# and against ε, and (4) say what adversarial training buys. **Prerequisites.** PyTorch autograd and the
# cross-entropy loss; no earlier notebook. **Time.** About 45 minutes with the exercises (an estimate); the cells ran in
# 71 to 176 s on a 2-core CPU that other jobs kept busy (measured: docs/COURSE.md).
#
# *Smooth Adversarial Training* (Xie, Tan, Gong, Yuille, Le; arXiv:2006.14536) trains networks that resist
# adversarial examples. Before anything is smoothed, this notebook sets up what the rest builds on: the
# **threat model** (what an attacker may change) and the **PGD attacker** (how it finds the change), using the
# repo's own attack from `02_pgd.py`.
#
# You will see a digits classifier that is accurate on clean images and wrong on most of them once each pixel may
# move by a little; robust accuracy against the number of PGD steps and against ε; and what adversarial training
# (Eq. 1) buys.
#
# It reuses stage 02's standard model (`runs/02_pgd/`) and stage 03's ReLU model (`runs/03_adv_train/`) when they
# exist, and otherwise trains them here into `runs/notebooks/` (two runs of 30 epochs).

# %% [markdown]
# ## The threat model
#
# Images are pixels in $[0, 1]$; the normalisation is the model's first layer, so ε is one number for every pixel.
# The attacker may add any perturbation δ from the $L_\infty$ ball
#
# $$\mathcal{S} = \{\, \delta : \|\delta\|_\infty \le \epsilon \,\}, \qquad x + \delta \in [0, 1]^d ,$$
#
# that is, every pixel may move by at most ε, independently of the others. The attack is *untargeted*: any wrong
# class counts as a success. **Robust accuracy** is the share of test images that an attack fails to turn into a
# mistake; since a stronger attack could still find one, it is an upper bound on the accuracy that no
# perturbation in the ball can lower. The paper uses ε = 4/255 on ImageNet. The digits here are 8×8 images with 17 grey
# levels (0, 1/16, ..., 1), so one grey level is about 16/255; this repo uses ε = 64/255 (four grey levels) on
# digits, a budget at which robust accuracy is neither near 0% nor near the clean accuracy.
#
# ## The min-max objective (paper, Eq. 1)
#
# Adversarial training (Madry et al. 2018) fits the weights θ to the worst perturbation in $\mathcal{S}$:
#
# $$\min_\theta \; \mathbb{E}_{(x, y) \sim \mathcal{D}} \Big[ \max_{\delta \in \mathcal{S}} L(\theta, x + \delta, y) \Big] \qquad (1)$$
#
# The inner max is the **attacker**, the outer min the **network optimizer**. Both use gradients, and that is
# where ReLU's step-function derivative comes in (notebook 2).
#
# ## PGD: projected gradient ascent on the loss
#
# The inner max has no closed form. Projected gradient descent (PGD) approximates it with $k$ signed-gradient
# steps of size α, each followed by a projection $\Pi$ back onto the ball around $x$ and the image box:
#
# $$x_0 = x + U(-\epsilon, \epsilon)^d, \qquad x_{t+1} = \Pi_{\mathcal{S}(x)}\Big( x_t + \alpha \,\mathrm{sign}\big(\nabla_x L(\theta, x_t, y)\big) \Big).$$
#
# FGSM is the one-step case with α = ε and no random start. The paper trains with PGD-1 (α = ε) and evaluates
# with PGD-200 (α = ε/4). The code is `pgd()` in `02_pgd.py`; `pgd_eval()` runs the same iterates but counts an
# example as broken as soon as any iterate fools the model, and stops spending compute on it.

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
import torch
import matplotlib.pyplot as plt
import sat_models
attack = nb.stage("02_pgd")   # pgd, pgd_eval, px, default_step, EPS_PX, draw_examples

EPS = attack.px(attack.EPS_PX["digits"])   # 64/255, the digits default, in [0, 1] units
x, y = nb.test_set(nb.size(200, 50))       # the first test images: (N, 1, 8, 8) in [0, 1], labels (N,)
print(f"{len(y)} test images; eps = {EPS * 255:g}/255 = {EPS:.3f} = {EPS * 16:.1f} grey levels")

# %% [markdown]
# ## Warm-up: FGSM on a linear model
#
# For a linear score $s(x) = w^\top x + b$ (class 1 when $s > 0$), the perturbation in the ball that lowers the
# score most is $\delta = -\epsilon\,\mathrm{sign}(w)$: every coordinate moves by ε against its weight, and the
# score falls by exactly $\epsilon \lVert w \rVert_1$. The gradient of the score is $w$, so one signed-gradient step
# (FGSM, Goodfellow et al. 2015) finds this exact worst case. The fall grows with the dimension: many tiny
# changes, each invisible, add up.

# %% tags=["deterministic"]
torch.manual_seed(0)
for d in (64, 784, 150_528):   # an 8x8 digit, a 28x28 Fashion-MNIST image, a 224x224x3 ImageNet crop
    w, x_lin = torch.randn(d) / d ** 0.5, torch.rand(d, requires_grad=True)   # weights scaled so s(x) stays O(1)
    (grad,) = torch.autograd.grad(x_lin @ w, x_lin)
    delta = -attack.px(4) * grad.sign()                                          # FGSM at eps = 4/255
    print(f"d = {d:>7}: FGSM step equals -eps * sign(w): {torch.equal(delta, -attack.px(4) * w.sign())}; "
          f"score falls by {(-(delta @ w)).item():.3f} = eps * ||w||_1 (each pixel moved by 4/255 only)")

# %% [markdown]
# ## A standard model
#
# First a model trained the ordinary way, on clean images only: stage 03's training loop with `attack="none"`,
# which is exactly what stage 02's `standard_digits_model` does.

# %%
found = nb.stage_output("02_pgd", "digits_standard", "final.pt")
if found:
    standard, _ = sat_models.model_from_checkpoint(found)
    print(f"stage 02's standard model: {os.path.relpath(found, ROOT)}")
else:
    E = nb.size(30, 3)
    standard, _ = nb.train_digits(f"digits_standard_e{E}", attack="none", epochs=E, milestones=nb.milestones(E))
print(f"clean accuracy on {len(y)} test images: {100 * nb.accuracy(standard, x, y):.1f}%")

# %% [markdown]
# ## Attacking it
#
# PGD-10 at ε = 64/255 with a random start. The figure is stage 02's `draw_examples`: each row shows the clean
# image with the model's prediction and confidence, the perturbation δ (red: brighter, blue: darker), and the
# adversarial image $x + \delta$.

# %%
torch.manual_seed(0)
x_adv = attack.pgd(standard, x, y, EPS, attack.default_step(EPS, 10), 10)   # PGD-10, random start
delta = x_adv - x
print(f"largest |delta| = {delta.abs().max() * 255:.1f}/255 (eps {EPS * 255:g}/255); "
      f"x_adv in [{x_adv.min():.2f}, {x_adv.max():.2f}]")
print(f"accuracy on x_adv: {100 * nb.accuracy(standard, x_adv, y):.1f}%")
os.makedirs(nb.OUT, exist_ok=True)
fig_path = os.path.join(nb.OUT, "nb1_adversarial_examples.png")
attack.draw_examples(standard, x, y, x_adv, fig_path)
nb.show_png(fig_path)

# %% [markdown]
# On 8×8 digits a change of four grey levels is visible to the eye, unlike 4/255 on ImageNet; the point is
# that the model's decision moves much further than a human's would.
#
# ## An adversarially trained model
#
# The same network trained with Eq. 1: every batch is replaced by its PGD-1 adversarial version (ε = 64/255,
# step ε, random start) before the SGD step. This is stage 03's digits preset; the cell reuses stage 03's run
# when it exists.

# %%
robust_relu, _, _ = nb.adv_model("relu")
print(f"clean accuracy: {100 * nb.accuracy(robust_relu, x, y):.1f}%")

# %% [markdown]
# ## Robust accuracy against the number of steps
#
# For a fixed ε, more PGD steps find more adversarial examples until the attack converges; robust accuracy must
# then level off (if it went *up* with more steps, the attack would be broken). Step size follows stage 02's rule
# $\alpha = \max(\epsilon/4, \epsilon/k)$. The standard model is shown at small ε (at 64/255 nothing survives); the
# adversarially trained one at its training ε.

# %%
STEPS = nb.size([1, 2, 5, 10, 20, 50], [1, 5, 20])

def robust_acc(model, eps, steps, seed=0):
    '''Fraction of the test images that no iterate of PGD-k (random start, stage 02's step rule) fools.'''
    torch.manual_seed(seed)
    return (attack.pgd_eval(model, x, y, eps, attack.default_step(eps, steps), steps) == -1).float().mean().item()

settings = {f"standard, eps {e:g}/255": (standard, attack.px(e)) for e in (8, 16, 32)}
settings[f"adversarially trained, eps {EPS * 255:g}/255"] = (robust_relu, EPS)
rows = []
fig, ax = plt.subplots(figsize=(6.5, 4))
for label, (model, eps) in settings.items():
    accs = [100 * robust_acc(model, eps, k) for k in STEPS]
    rows.append([label] + accs)
    ax.plot(STEPS, accs, "o-", label=label)
ax.set(xscale="log", xlabel="PGD steps k", ylabel="robust accuracy %", ylim=(-2, 102), title="robust accuracy vs PGD steps")
ax.grid(alpha=0.3); ax.legend(fontsize=8)
nb.show(fig)
nb.table(["model, eps"] + [f"PGD-{k} %" for k in STEPS], rows)

# %% [markdown]
# ## Robust accuracy against ε
#
# PGD-20 at growing ε. At ε = 0 this is the clean accuracy; at a large ε every image can be turned into any other,
# so robust accuracy must fall to chance (10%) or below. A curve that stays high at large ε points to a broken
# attack, not a robust model (notebook 4).

# %%
EPS_GRID = nb.size([0, 2, 4, 8, 16, 32, 64, 128], [0, 4, 16, 64])
curves = {}
for label, model in [("standard", standard), ("adversarially trained (PGD-1, 64/255)", robust_relu)]:
    curves[label] = [100 * (nb.accuracy(model, x, y) if e == 0 else robust_acc(model, attack.px(e), 20)) for e in EPS_GRID]
fig, ax = plt.subplots(figsize=(6.5, 4))
for label, accs in curves.items():
    ax.plot(EPS_GRID, accs, "o-", label=label)
ax.axhline(10, color="gray", ls=":", lw=1, label="chance")
ax.set(xlabel="eps (pixel units, /255)", ylabel="PGD-20 robust accuracy %", ylim=(-2, 102), title="robust accuracy vs eps")
ax.grid(alpha=0.3); ax.legend(fontsize=8)
nb.show(fig)
nb.table(["model"] + [f"{e:g}/255" for e in EPS_GRID], [[k] + v for k, v in curves.items()])

# %% [markdown]
# ## What the numbers say
#
# The sentences below are computed from the runs above, so they hold whatever this particular run produced.

# %%
std_curve, adv_curve = curves.values()
i64 = EPS_GRID.index(64)
print(f"standard model: clean {std_curve[0]:.1f}%, PGD-20 at 4/255 {std_curve[EPS_GRID.index(4)]:.1f}%, "
      f"at 64/255 {std_curve[i64]:.1f}%")
print(f"adversarially trained: clean {adv_curve[0]:.1f}%, PGD-20 at 64/255 {adv_curve[i64]:.1f}%")
print(f"-> Eq. 1 changed clean accuracy by {adv_curve[0] - std_curve[0]:+.1f} points and PGD-20 accuracy at the "
      f"training eps by {adv_curve[i64] - std_curve[i64]:+.1f} points")
last = rows[-1][1:]
print(f"adversarially trained, eps 64/255: PGD-{STEPS[0]} {last[0]:.1f}% -> PGD-{STEPS[-1]} {last[-1]:.1f}% "
      f"({last[0] - last[-1]:.1f} points found by the extra steps)")

# %% [markdown]
# Here adversarial training changed clean accuracy by the amount printed above, at most a point or so, within the
# noise of 200 test images (at ImageNet scale it costs several points), and bought robustness at the ε it was
# trained for, which fades beyond it. The gap between PGD-1 and PGD-k for the trained model is the reason the paper
# evaluates with 200 steps although it trains with one. Whether 200 steps are enough, and whether PGD is the
# right attack at all, is notebook 4's question.
#
# ## Exercises
#
# 1. **FGSM vs PGD.** FGSM is `attack.pgd(model, x, y, eps, eps, 1, rand_start_prob=0.0)`. Compute its accuracy on
#    the adversarially trained model at ε = 64/255 and compare it with PGD-10 and PGD-50. Which is lower, and why?
# 2. **Restarts.** An example is robust only if it survives every restart. Run PGD-10 with three different seeds on
#    the adversarially trained model and count an example as robust only if none of the three fools it. How much
#    does robust accuracy fall from one restart to three?
# 3. **Where does PGD put the perturbation?** Plot a histogram of the pixel values of δ = x_adv − x for PGD-10 at
#    64/255 on the adversarially trained model. Why do most values sit at +ε, −ε or 0?
# 4. **Write PGD yourself.** Fill in `my_pgd` in the cell below: `steps` signed-gradient steps of size `step` on the
#    cross-entropy, each followed by the projection onto the ball (|δ| ≤ ε) and onto the image box ([0, 1]).
#    Start at x itself when `rand_start` is False, so that the first check can compare your iterates with a
#    reference PGD pixel for pixel. Then add the random start: with `rand_start=True`, start at x + δ₀ with δ₀
#    uniform in the ball; the second check tests its distribution and the attack's strength (a random start
#    changes every iterate, so no pixel-for-pixel comparison there). Each check prints PASS, or FAIL with a hint;
#    a call of stage 02's `attack.pgd` does not count as an answer.

# %%
import checks   # notebooks/checks.py: each exercise's check, PASS or FAIL with a hint


def my_pgd(model, x, y, eps, step, steps, rand_start=False):
    """Untargeted L-inf PGD: returns x_adv with |x_adv - x| <= eps and x_adv in [0, 1]. Starts at x itself, or
    with rand_start=True at x + delta_0, delta_0 uniform in [-eps, eps]."""
    # your code here: a delta that requires grad, torch.nn.functional.cross_entropy(model(x + delta), y),
    # torch.autograd.grad, a step along the sign, then torch.clamp twice (the ball, then the box)
    return None


first_half = checks.check_pgd(my_pgd, robust_relu, x, y, EPS)                # True or False, as printed; from x, pixel for pixel
second_half = checks.check_pgd_random_start(my_pgd, robust_relu, x, y, EPS)   # the random start

# %% [markdown] tags=["solution"]
# ## Solutions
#
# **1.** One signed-gradient step assumes the loss is linear across the whole ball. For a model trained against
# one-step attacks it is curved near x, so one step of size ε lands in a poor place; several smaller steps follow
# the curvature. If FGSM ever beat PGD-k by more than noise, the multi-step attack would not be working: that is
# one of stage 04's checks for gradient masking (notebook 4).

# %% tags=["solution"]
torch.manual_seed(0)
x_fgsm = attack.pgd(robust_relu, x, y, EPS, EPS, 1, rand_start_prob=0.0)
print(f"FGSM {100 * nb.accuracy(robust_relu, x_fgsm, y):.1f}%   PGD-10 {100 * robust_acc(robust_relu, EPS, 10):.1f}%   "
      f"PGD-50 {100 * robust_acc(robust_relu, EPS, 50):.1f}%")

# %% [markdown] tags=["solution"]
# **2.** Each restart starts from another random point in the ball and can find adversarial examples the others
# missed; the per-example AND of "survived" over restarts can only fall. The fall tells you how far a single run
# of the attack is from converged.

# %% tags=["solution"]
survived = torch.ones_like(y, dtype=torch.bool)
for seed in range(3):
    torch.manual_seed(seed)
    survived &= attack.pgd_eval(robust_relu, x, y, EPS, attack.default_step(EPS, 10), 10) == -1
    print(f"robust to all of {seed + 1} restart(s): {100 * survived.float().mean():.1f}%")

# %% [markdown] tags=["solution"]
# **3.** Each PGD step moves every pixel by ±α and the projection clips it to [−ε, ε]: after ten steps a large share
# of the pixel changes (printed below) sit on a face of the $L_\infty$ ball, at ±ε. Digits have a black background
# (value 0), where the image box allows only δ ≥ 0; those pixels end at 0 or +ε.

# %% tags=["solution"]
torch.manual_seed(0)
d = ((attack.pgd(robust_relu, x, y, EPS, attack.default_step(EPS, 10), 10) - x) * 255).flatten()
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(d.numpy(), bins=65)
ax.set(xlabel="delta (pixel units, /255)", ylabel="pixels", yscale="log", title="PGD-10 perturbation values")
nb.show(fig)
at_eps = (d.abs() > EPS * 255 - 0.5).float().mean().item()
at_zero = (d.abs() < 0.5).float().mean().item()
print(f"{100 * at_eps:.0f}% of pixel changes are at +-eps, {100 * at_zero:.0f}% are ~0; "
      f"{100 * (x == 0).float().mean():.0f}% of the clean pixels are black (0)")

# %% [markdown] tags=["solution"]
# **4.** Each step: the loss's gradient with respect to δ (not the weights), a step of size α along its sign, then
# the two projections. The random start is drawn once, before the first step, and cut so that x + δ₀ stays in
# the image box. Both checks pass: the same iterates as the reference from x, pixel for pixel, and with the
# random start a uniform δ₀ and an attack as strong as the reference's.

# %% tags=["solution"]
def my_pgd(model, x, y, eps, step, steps, rand_start=False):
    model.eval()
    delta = torch.zeros_like(x)
    if rand_start:
        delta = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x + delta), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)   # the ball
        delta = (x + delta).clamp(0, 1) - x                               # the image box
    return (x + delta).detach()


first_half = checks.check_pgd(my_pgd, robust_relu, x, y, EPS)
second_half = checks.check_pgd_random_start(my_pgd, robust_relu, x, y, EPS)

# %% tags=["solution"]
nb.stamp()   # the answer key's stamp: the code these outputs came from (tests/test_notebooks.py checks it)
