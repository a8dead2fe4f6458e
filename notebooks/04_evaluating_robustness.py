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
# # 4. Evaluating robustness without fooling yourself
#
# **Learning objectives.** After this notebook you can (1) list Carlini et al.'s sanity checks, (2) run PGD, APGD
# and Square on one model and read their disagreement, and (3) recognise two deliberately masked models that PGD
# calls robust. **Prerequisites.** Notebook 1. **Time.** About 45 minutes with the exercises (an estimate); the cells ran
# in 2 to 6 minutes on a 2-core CPU that other jobs kept busy (measured: docs/COURSE.md).
#
# A robust accuracy is a claim that *no* perturbation in the ball fools the model; an attack can only ever show
# the opposite. So every robustness number is an upper bound, as good as the strongest attack behind it, and a
# model can look robust because the attack fails rather than because the model is robust: **gradient masking**.
# Carlini et al. (2019, "On Evaluating Adversarial Robustness") list the checks; stage 04 (`04_eval.py`) runs them
# on every checkpoint. This notebook shows what they catch.
#
# The attacks (all untargeted, $L_\infty$, ε = 64/255 on digits):
#
# * **PGD** (stage 02): signed gradient steps on the cross-entropy $L_{CE} = -\log \mathrm{softmax}(z)_y$ of the logits $z$.
# * **APGD** (Croce & Hein 2020, via `torchattacks`): PGD with an adaptive step size and momentum, on the
#   cross-entropy or on the *difference of logits ratio*
#   $$\mathrm{DLR}(z, y) = -\frac{z_y - \max_{i \ne y} z_i}{z_{\pi_1} - z_{\pi_3}},$$
#   with $z_{\pi_1} \ge z_{\pi_2} \ge \dots$ the sorted logits. DLR does not change when the logits are scaled or
#   shifted, so a saturated softmax cannot hide the gradient from it.
# * **APGD-T** (the reference AutoAttack's second attack, from the `pyautoattack` package): APGD on a *targeted*
#   DLR loss, which pushes the logit of one chosen wrong class above the true one; it runs once for each of the
#   likeliest wrong classes (9 on digits). Scale-free like DLR.
# * **Square** (Andriushchenko et al. 2020, via `torchattacks`): random search with square-shaped updates on the
#   margin $z_y - \max_{i \ne y} z_i$, using only the model's outputs, never a gradient.
# * **PGD-200 through the smooth backward** (`pgd200_sg`, on models with ReLU's forward only): notebook 2's σ(10x)
#   in place of ReLU's step, for the attacker only, an attack adapted to ReLU's coarse gradient.
#
# The headline number of stage 04 is the **worst case**: an image counts as robust only if every attack failed on it.

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
import torch.nn as nn
import torch.nn.functional as F
import matplotlib.pyplot as plt
ev = nb.stage("04_eval")       # evaluate_model, masking_flags, PGD_STEPS, EPS_FACTORS, TOL_*
attack = nb.stage("02_pgd")
EPS = attack.px(attack.EPS_PX["digits"])
x, y = nb.test_set(nb.size(200, 50))
BUDGET = dict(apgd_steps=nb.size(50, 5), square_queries=nb.size(500, 50))   # stage 04's defaults: 100, 1000
print(f"{len(y)} test images, eps {EPS * 255:g}/255, APGD {BUDGET['apgd_steps']} steps, Square {BUDGET['square_queries']} queries")

# %% [markdown]
# ## A trained model, every attack
#
# The adversarially trained ReLU model (stage 03's preset, PGD-1 at 64/255), through stage 04's `evaluate_model`.
# Whether its PGD-200 number can be trusted is what the checks below decide.

# %%
relu, _, _ = nb.adv_model("relu")
evals = {"ReLU, adversarially trained": ev.evaluate_model(relu, x, y, EPS, 10, **BUDGET)}
ATTACKS = ["clean", "fgsm", "pgd1", "pgd10", "pgd50", "pgd200", "pgd200_sg", "apgd_ce", "apgd_dlr", "apgd_t", "square", "worst"]

def show_results(evals):
    nb.table(["model"] + ATTACKS, [[name] + [100 * r[k] for k in ATTACKS] for name, r in evals.items()])
    for name, r in evals.items():
        print(f"{name}: flags: {'; '.join(r['flags']) or 'none'}")

show_results(evals)
for k, p in evals["ReLU, adversarially trained"]["params"].items():
    print(f"  {k:<9} {p}")


# %% [markdown]
# Two things to look for. PGD-k must not *rise* with k (more steps can only find more). And the independent
# attacks: if APGD or Square beat PGD-200 by several points, PGD was not finding the worst case on this model,
# so PGD-200 alone would have overstated its robustness.
#
# ## Two deliberately masked models
#
# Both wrap the trained model without changing a single prediction on clean images:
#
# * **Scaled logits**: the logits times $10^4$. The argmax is the same, but the softmax saturates: for a correctly
#   classified image the cross-entropy is exactly 0 in float32, and so is its gradient. PGD and APGD-CE see a flat
#   loss; APGD-DLR and APGD-T (scale-free) and Square (no gradient) do not.
# * **Rounded input**: the pixels are rounded to the digits' own 17 grey levels before the model. Clean digits are
#   already on that grid, so nothing changes for them, but `round()` has zero gradient everywhere: every
#   gradient-based attack is blind; Square is not.

# %%
class ScaledLogits(nn.Module):
    '''model(x) * scale: same predictions, saturated softmax (a classic accidental "defence").'''
    def __init__(self, model, scale=1e4):
        super().__init__()
        self.model, self.scale = model, scale
    def forward(self, x):
        return self.model(x) * self.scale

class RoundedInput(nn.Module):
    '''Rounds pixels to multiples of 1/levels before the model: zero gradient everywhere.'''
    def __init__(self, model, levels=16):
        super().__init__()
        self.model, self.levels = model, levels
    def forward(self, x):
        return self.model(torch.round(x * self.levels) / self.levels)

scaled, rounded = ScaledLogits(relu).eval(), RoundedInput(relu).eval()
with torch.no_grad():
    same = [(m(x).argmax(1) == relu(x).argmax(1)).all().item() for m in (scaled, rounded)]
print(f"same clean predictions as the model they wrap: scaled {same[0]}, rounded {same[1]}")

def zero_grad_share(model):
    '''Share of correctly classified images whose cross-entropy gradient w.r.t. the input is exactly 0.'''
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xr)
    ok = logits.argmax(1) == y
    return (g.flatten(1).abs().sum(1)[ok] == 0).float().mean().item()

for name, m in [("unwrapped", relu), ("scaled logits", scaled), ("rounded input", rounded)]:
    print(f"{name:<14} exactly-zero input gradient for {100 * zero_grad_share(m):5.1f}% of correctly classified images")

# %%
import warnings
zero_gradient_warnings = {}
for name, m in [("scaled logits (x 1e4)", scaled), ("rounded input (17 levels)", rounded)]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evals[name] = ev.evaluate_model(m, x, y, EPS, 10, **BUDGET)
    zero_gradient_warnings[name] = sum("zero gradient" in str(w.message) for w in caught)
    for w in caught:   # any other warning is shown as usual
        if "zero gradient" not in str(w.message):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
show_results(evals)
for name, n in zero_gradient_warnings.items():
    if n:   # pyautoattack's own hint names flags_doc.md, a page of its GitHub repository (fra31/auto-attack), not a file here
        print(f"{name}: pyautoattack's APGD-T warned {n} times that some images have a zero gradient: the masking this "
              f"model was built to show (its warnings are collected here instead of printed)")

# %%
fig, (ax_k, ax_e) = plt.subplots(1, 2, figsize=(11, 3.8))
for i, (name, r) in enumerate(evals.items()):
    style = dict(ls=["-", "--", ":"][i % 3], marker="o", lw=2.5 - 0.7 * i)   # two masked curves coincide: keep both visible
    line, = ax_k.plot(ev.PGD_STEPS, [100 * r[f"pgd{k}"] for k in ev.PGD_STEPS], label=name, **style)
    for atk, mk, at in [("apgd_dlr", "^", 1.6), ("square", "*", 2.4)]:
        ax_k.plot(ev.PGD_STEPS[-1] * at * (1 + 0.08 * i), 100 * r[atk], mk, color=line.get_color(), ms=9)
    eps_px = [float(e) for e in r["eps_curve"]]
    ax_e.plot(eps_px, [100 * a for a in r["eps_curve"].values()], label=name, **style)
ax_k.set(xscale="log", xlabel="PGD steps (triangle: APGD-DLR, star: Square)", ylabel="robust accuracy %", ylim=(-2, 102),
         title="PGD-k, and the independent attacks")
ax_e.axhline(10, color="gray", ls=":", lw=1)
ax_e.set(xlabel="eps (pixel units, /255), PGD-20", ylabel="robust accuracy %", ylim=(-2, 102), title="robust accuracy vs eps")
for ax in (ax_k, ax_e):
    ax.grid(alpha=0.3); ax.legend(fontsize=7)
nb.show(fig)

# %% [markdown]
# ## The checks stage 04 runs, and why
#
# Each check is a property that a working attack on any model must show; a failure does not prove masking, but
# it means the number cannot be reported as it is. `04_eval.masking_flags(result, num_classes)` runs them on a
# result dict and returns one line per failure (that is what `evaluate_model` stored in `flags` above).
#
# | check | what must hold | why |
# |---|---|---|
# | **steps** | PGD-k does not rise with k (1 → 10 → 50 → 200) | more iterations of a working attack can only find more |
# | **eps** | PGD-20 at 8 × ε is at most chance + 10 points | with a huge ball every image can be turned into any other |
# | **single-step** | FGSM is not stronger than PGD-200 | a multi-step attack that loses to one step is not following the loss |
# | **independent** | APGD-CE, APGD-DLR, APGD-T and Square do not beat PGD-200 by more than 3 points | a second, different attack must not find what ours missed |

# %%
print(f"tolerances: steps {100 * ev.TOL_STEPS:g} points, single-step {100 * ev.TOL_FGSM:g}, independent "
      f"{100 * ev.TOL_INDEP:g}, eps: chance + {100 * ev.TOL_CHANCE:g}")
CHECKS = ["steps", "eps", "single-step", "independent"]
nb.table(["model"] + CHECKS, [[name] + [("FLAG" if any(f.startswith(c + ":") for f in r["flags"]) else "ok") for c in CHECKS]
                              for name, r in evals.items()])
again = {name: ev.masking_flags(r, 10) == r["flags"] for name, r in evals.items()}
print(f"masking_flags recomputed from the numbers gives the same flags: {again}")
honest, masked = evals["ReLU, adversarially trained"], [evals["scaled logits (x 1e4)"], evals["rounded input (17 levels)"]]
for name, r in list(evals.items())[1:]:
    print(f"{name}: PGD-200 says {100 * r['pgd200']:.1f}%, the worst case over all attacks {100 * r['worst']:.1f}% "
          f"(the model it wraps: {100 * honest['worst']:.1f}%)")

# %% [markdown]
# What to take from it. The scaled model makes the same decision as the model it wraps on *every* input, so it is
# exactly as robust; the rounded one makes the same decisions on clean digits, and an attacker only has to push a
# few pixels across a rounding threshold, which a gradient-free search does easily. A PGD-only evaluation calls
# both far more robust than the model inside them; the independent attacks and the flags say otherwise. The same
# mechanism, milder, is why stage 04 reports the worst case for the real models, and why notebook 3 compares
# activations by it.
#
# One more lesson hides in the scaled model. It never disagrees with the unwrapped model, so it is exactly as
# robust; but on it the gradient attacks (FGSM, PGD, APGD-CE, the smooth-backward PGD) are blind, and only the
# scale-free ones (APGD-DLR, APGD-T, Square) still work. Its worst case is therefore the unwrapped model's worst
# case over the scale-free attacks alone (up to the few images a blinded PGD's random start still breaks). The
# cell prints the three numbers. When the scale-free attacks alone reach the unwrapped model's full worst case,
# the difference is 0 and the attack set is robust to this masking; when they do not, the scaled model looks more
# robust than the identical unwrapped one by what the blinded attacks had found: the worst case over a fixed set of
# attacks is itself only an upper bound, as good as the attacks that still work on the model.

# %%
SCALE_FREE = [k for k in ("apgd_dlr", "apgd_t", "square") if k in honest["per_image"]]

def worst_over(r, attacks):
    '''Share of the images that every attack in `attacks` failed on (and the model got right), from the per-image bits.'''
    bits = [r["per_image"][k] for k in ["clean"] + attacks]
    return sum(all(b[i] == "1" for b in bits) for i in range(len(bits[0]))) / len(bits[0])

scaled_worst, free_worst = evals["scaled logits (x 1e4)"]["worst"], worst_over(honest, SCALE_FREE)
print(f"unwrapped model, worst case over all attacks: {100 * honest['worst']:.1f}%; over the scale-free ones only "
      f"({', '.join(SCALE_FREE)}): {100 * free_worst:.1f}%")
print(f"scaled model, worst case over all attacks: {100 * scaled_worst:.1f}%, "
      f"{100 * (scaled_worst - honest['worst']):+.1f} points against the identical unwrapped model")

# %% [markdown]
# ## Exercises
#
# 1. **When does scaling start to hide the gradient?** For scales 1, 10, 100, 1000, 10000, measure the share of
#    zero gradients and PGD-10 accuracy of `ScaledLogits(relu, scale)`.
# 2. **DLR does not care about scale.** Compute the DLR loss (formula above) and the cross-entropy of `relu` and
#    `scaled` on the clean test images and compare them.
# 3. **Breaking the rounding defence.** The standard fix for a non-differentiable layer is BPDA (Athalye et al.
#    2018): use it in the forward pass, pretend it is the identity in the backward pass. Write the rounding as a
#    `torch.autograd.Function` with a straight-through backward and attack the rounded model with stage 02's PGD-50.

# %% [markdown] tags=["solution"]
# ## Solutions

# %% tags=["solution"]
# 1. scale sweep
for scale in nb.size([1, 10, 100, 1e3, 1e4], [1, 1e4]):
    m = ScaledLogits(relu, scale).eval()
    torch.manual_seed(0)
    acc = (attack.pgd_eval(m, x, y, EPS, attack.default_step(EPS, 10), 10) == -1).float().mean().item()
    print(f"scale {scale:>7g}: zero gradients {100 * zero_grad_share(m):5.1f}%, PGD-10 robust accuracy {100 * acc:5.1f}%")


# %% [markdown] tags=["solution"]
# PGD only needs the *sign* of the gradient, so a tiny gradient is as good as a large one; it fails once the
# gradient is exactly zero, which happens when the scaled logit margins pass about 100 and exp(−margin) underflows
# to 0 in float32. From then on PGD's random start is the only thing it still does.

# %% tags=["solution"]
# 2. DLR vs cross-entropy under scaling
def dlr(z, y):
    zs = z.sort(1, descending=True).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), -float("inf")).max(1).values
    return -(z_y - z_other) / (zs[:, 0] - zs[:, 2] + 1e-12)

with torch.no_grad():
    for name, m in [("relu", relu), ("scaled", scaled)]:
        z = m(x)
        print(f"{name:<7} mean DLR {dlr(z, y).mean():+.4f}   mean cross-entropy {F.cross_entropy(z, y):.4g}")


# %% tags=["solution"]
# 3. BPDA / straight-through rounding
class RoundST(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, levels):
        return torch.round(x * levels) / levels
    @staticmethod
    def backward(ctx, g):
        return g, None   # pretend round() is the identity

class RoundedInputST(RoundedInput):
    def forward(self, x):
        return self.model(RoundST.apply(x, self.levels))

bpda = RoundedInputST(relu).eval()
for name, m in [("rounded, true gradient", rounded), ("rounded, straight-through gradient", bpda)]:
    torch.manual_seed(0)
    broken_at = attack.pgd_eval(m, x, y, EPS, attack.default_step(EPS, 50), 50)
    # pgd_eval judges every iterate with m's forward pass, which rounds in both cases: the same model, two gradients
    print(f"{name:<36} PGD-50 robust accuracy {100 * (broken_at == -1).float().mean():.1f}%")
print(f"worst case over all attacks on the rounded model (above): {100 * evals['rounded input (17 levels)']['worst']:.1f}%")

# %% [markdown] tags=["solution"]
# With the straight-through gradient PGD sees the network behind the rounding again and its number drops
# towards the worst case found by Square; whatever gap remains is the rounding making single steps too small to
# cross a threshold. An evaluation that adapts the attack to the defence is what Carlini et al. ask for.

# %% tags=["solution"]
nb.stamp()   # the answer key's stamp: the code these outputs came from (tests/test_notebooks.py checks it)
