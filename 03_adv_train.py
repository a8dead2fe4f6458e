"""Stage 03: (smooth) adversarial training, from 8x8 digits on a laptop CPU to ResNet-50 on ImageNet on GPUs.
Measured (digits, eps 64/255, 15 seeds: `python 03_adv_train.py --seeds 15`, then `python 04_eval.py`): worst-case
robust accuracy ReLU 35.2 ± 3.3%, ReLU with the smooth backward for the attacker 40.2 ± 3.0% (RESULTS.md).

Paper: arXiv:2006.14536, Section 2 (adversarial training, Eq. 1), Section 3 (Table 1: ReLU forward with a
smooth backward for the attacker and/or the optimizer), Section 4 (Figure 3: smooth activations). The
paper's training code was never released; this file is a from-scratch implementation of its recipe.

    min_theta E_{(x,y)} [ max_{||delta||_inf <= eps} L(theta, x + delta, y) ]            (Eq. 1)

Each step: (1) the attacker (stage 02's pgd, PGD-1 by default) maximises the loss over delta, with BatchNorm
statistics frozen; (2) the optimizer takes one SGD step on the loss at x + delta. SAT = the same loop with
a smooth activation (stage 01) instead of ReLU. That step, adversarial_training_step, runs pasted into your code
beside stage 02's pgd (docs/SNIPPETS.md); smooth_grad_step wraps it with Table 1's attacker/optimizer switch.

Run it (`--help` lists every setting with its unit, range and default):
    python 03_adv_train.py                   # digits, CPU: Table 1's 4 rows + Figure 3's 7 activations, 42-55 s
                                             # on 2 cores (10 runs of 7-8 s, two at a time)
    python 03_adv_train.py --act silu        # narrow: one activation;  --smooth-grad both: one Table 1 row
    python 03_adv_train.py --seeds 15        # seeds 0..14 of everything (the README's study, ~22 min)
    python 03_adv_train.py --dataset fashionmnist --data /usr/share/datasets/fashion-mnist --act silu
                                             # one CPU core, ~4 min (preset 'fashionmnist', 28x28 grey)
    python 03_adv_train.py --dataset cifar10 --data data --download --act silu          # one GPU, ~ResNet-18
    torchrun --nproc_per_node 8 03_adv_train.py --dataset imagenet --data /path/to/imagenet --act silu
                                             # the paper's ResNet-50 recipe (preset 'imagenet')
A sweep trains `--jobs N` runs at once (default: one per core), with the same weights as `--jobs 1`. After a
crash, the same command with `--resume` ends with an uninterrupted run's weights (`--checkpoint-every N` also
checkpoints inside an epoch). The harness behind that: sat_training_run.py (resume, torchrun), sat_sweep.py (sweeps).
Writes, per run, in runs/03_adv_train/<dataset>_[<model>_]<act>[_sg-<mode>][_eps<eps>][_pgd<k>]_s<seed>/ (a setting
named where it is not the preset's):
    checkpoint.pt   every epoch (and every --checkpoint-every steps): model, optimizer, scheduler, scaler,
                    epoch, config, rng, metrics; final.pt: the same once finished (stage 04 evaluates it);
                    best.pt: with a validation split (--val-size), the epoch of the best validation PGD-10
    log.csv         one row per epoch (the printed table);  train.log: the printout, with --jobs > 1
"""
import argparse
import dataclasses
import importlib
import math
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import sat_cli
import sat_data
import sat_files
import sat_models
import sat_seeds
import sat_sweep
import sat_training_run
from sat_cli import setting
from sat_training_run import TrainingDiverged  # noqa: F401  (raised by train(); importable from here)

acts = importlib.import_module("01_activations")
attack = importlib.import_module("02_pgd")
pgd = attack.pgd   # the attacker of the training step (stage 02)

OUT_DIR = os.path.join(sat_files.RUNS_DIR, "03_adv_train")
SMOOTH_GRAD_MODES = ("none", "attacker", "optimizer", "both")


# ----------------------------------------------------------------------------------------------------
# Settings: each declared once; the command line and its checks are generated from them (sat_cli.setting)

@dataclass
class Config:
    # data and model
    dataset: str = setting("digits", "data set; picks the preset of the settings below", choices=sat_data.DATASETS, noun="dataset")
    data: str = setting("data", "folder of cifar10 (holds cifar-10-batches-py/), fashionmnist (its 4 .gz files) or imagenet (train/, val/)")
    download: bool = setting(False, "cifar10, fashionmnist: download into --data if missing")
    model: str = setting("digitsnet", "digitsnet | fashionnet | cifar_resnet18 | any torchvision model (resnet50, ...)")
    width: int = setting(16, "digitsnet, fashionnet only: channels of the first block", range=(1, 4096))
    image_size: int = setting(224, "imagenet only: training crop / evaluation crop", "pixels", range=(16, 4096))
    num_classes: int = 10          # filled from the data set
    act: str = setting("relu", "activation (stage 01)", choices=acts.ACTIVATIONS, noun="activation")
    smooth_grad: str = setting("none", "relu only: who gets the smooth backward (Table 1)", choices=SMOOTH_GRAD_MODES)
    # attack used to craft training examples (stage 02)
    attack: str = setting("pgd", "the attack crafting the training examples; none = standard training", choices=("pgd", "none"))
    eps: float = setting(64.0, "L-inf radius", "pixels/255 (64 and 64/255 mean 64/255)", range=(0, 255), lo_open=True, hint=" (pixel units: 4 means 4/255)")
    attack_steps: int = setting(1, "PGD-k during training; the paper: 1", "steps", range=(1, 100_000))
    attack_step: float = setting(0.0, "step size; 0 = stage 02's default_step (= eps for PGD-1)", "pixels/255",
                                 range=(0, 255), hint=" (pixel units: 4 means 4/255; 0 = the default)")
    rand_start_prob: float = setting(1.0, "share of batches starting from a random point (paper's code: 0.8)", range=(0, 1))
    # optimisation (paper, ImageNet: SGD Nesterov 0.9, lr 0.1 x batch/256, 5 warm-up epochs, /10 at 30/60/90)
    epochs: int = setting(30, "passes over the training set", range=(1, 100_000))
    steps_per_epoch: int = setting(0, "0 = the whole training set each epoch; N = its first N batches only", range=(0, math.inf))
    batch_size: int = setting(64, "GLOBAL batch (split over the processes of a torchrun job)", "images", range=(1, math.inf))
    lr_per_256: float = setting(0.2, "learning rate for a batch of 256; actual lr = lr_per_256 * batch/256",
                                range=(0, math.inf), lo_open=True)
    momentum: float = setting(0.9, "Nesterov momentum", range=(0, 1))
    weight_decay: float = setting(5e-4, "on conv/linear weights only (not BN, biases, SmoothReLU alpha)", range=(0, 1))
    warmup_epochs: float = setting(2.0, "linear warm-up from ~0 to lr, per iteration", "epochs", range=(0, 100_000))
    milestones: list = setting([15, 25], "epochs at which lr is divided by 10", range=(1, 100_000))
    label_smoothing: float = setting(0.0, "imagenet preset: 0.1 (an assumption, not in the paper: docs/PAPER.md)", range=(0, 1))
    # running
    seed: int = setting(0, "seeds weights, data order and random starts", range=(0, 2**32 - 1))
    device: str = setting("auto", "auto (CUDA if present) | cpu | cuda | cuda:N")
    amp: str = setting("auto", "mixed precision: auto = bf16 on CUDA, off on CPU", choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool = setting(False, "NHWC memory layout (faster convs on recent GPUs)")
    compile: bool = setting(False, "torch.compile the model")
    workers: int = setting(0, "DataLoader worker processes (imagenet: 8+ per GPU)", range=(0, 1024))
    threads: int = setting(0, "CPU threads for torch; 0 = torch's default (one per core)", range=(0, 4096))
    val_size: int = setting(0, "training images held out as a validation split (class-balanced, the same for every "
                            "run): the per-epoch check runs on it and best.pt keeps its best epoch; 0 = none, the check "
                            "reads the first test images and is a monitor only", "images", range=(0, math.inf))
    check_size: int = setting(256, "images of the per-epoch clean / PGD-10 check (validation split, else test)", range=(1, math.inf))
    checkpoint_every: int = setting(0, "also write checkpoint.pt every N steps inside an epoch (0 = at epoch ends)", "steps",
                                    range=(0, math.inf))
    out: str = ""                  # run folder; empty = runs/03_adv_train/<run name> (--out names the runs folder)


# ----------------------------------------------------------------------------------------------------
# The training step (Eq. 1): the piece of this file to copy into your own code, beside stage 02's pgd

def adversarial_training_step(model, x, y, optimizer, eps, step, steps, rand_start_prob=1.0, label_smoothing=0.0,
                              attack_model=None, autocast=None, scaler=None):
    """One step of adversarial training (Eq. 1). x: (B, C, H, W) pixels in [0, 1]; y: (B,); eps, step in [0, 1] units.
    Inner max: x_adv = pgd(x), PGD-`steps` (stage 02; BatchNorm statistics frozen inside); steps = 0 is standard
    training (x_adv = x). Outer min: one optimizer step on the cross-entropy of model(x_adv).
    attack_model: the model the attacker queries, if not `model` (the bare module under DistributedDataParallel, so
    that the attack syncs neither gradients nor buffers); autocast: a function returning the mixed-precision context
    (None: full precision); scaler: torch.amp.GradScaler for fp16 (bf16 and fp32 need none).
    Returns (loss, logits on x_adv), detached."""
    amp = autocast or nullcontext
    x_adv = x
    if steps > 0:
        with amp():
            x_adv = pgd(attack_model or model, x, y, eps, step, steps, rand_start_prob)
    model.train()
    with amp():
        logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:                             # fp16: the loss scaled against underflow, the step skipped on inf/NaN
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), logits.detach()


# ---- Table 1 (optional): ReLU forward, smooth backward for the attacker, the optimizer or both --------------

def smooth_grad_step(model, x, y, optimizer, eps, step, steps, rand_start_prob=1.0, smooth_grad="none", **kw):
    """adversarial_training_step with Table 1's switch, for a model whose ReLUs are stage 01's SmoothGradReLU: their
    smooth backward (sigmoid(10 x) for ReLU's step) on for the attacker's gradient iff smooth_grad is attacker or
    both, for the optimizer's iff optimizer or both. smooth_grad='none' is adversarial_training_step itself.
    kw: adversarial_training_step's other settings. Returns what it returns."""
    # a typo, or a model without SmoothGradReLU, would silently train plain ReLU: refuse (Python objects only, no sync)
    if smooth_grad not in SMOOTH_GRAD_MODES:
        raise ValueError(f"unknown smooth_grad {smooth_grad!r}; accepted: {', '.join(SMOOTH_GRAD_MODES)}")
    if smooth_grad == "none":
        return adversarial_training_step(model, x, y, optimizer, eps, step, steps, rand_start_prob, **kw)
    if not acts.switchable_relus(model):
        raise ValueError(f"smooth_grad={smooth_grad!r}: the model has no switchable ReLU (stage 01's SmoothGradReLU), so it "
                         "would change nothing; swap them in first: acts.swap_activations(model, 'relu', smooth_grad=True)")
    # the flag is read at forward time: on the attacker's forward passes (inside pgd) as the attacker's row says,
    # on the training forward pass as the optimizer's says
    kw["attack_model"] = SmoothBackward(kw.get("attack_model") or model, smooth_grad in ("attacker", "both"))
    with acts.smooth_backward(model, smooth_grad in ("optimizer", "both")):
        return adversarial_training_step(model, x, y, optimizer, eps, step, steps, rand_start_prob, **kw)


class SmoothBackward(torch.nn.Module):
    """`model` with the smooth backward of its SmoothGradReLUs on (or off) in each of its forward passes."""

    def __init__(self, model, on):
        super().__init__()
        self.model, self.on = model, on

    def forward(self, x):
        with acts.smooth_backward(self.model, self.on):
            return self.model(x)


# ----------------------------------------------------------------------------------------------------
# Presets and what the paper compares

PRESETS = {
    # digits: chosen by the small study in the README ("Choosing eps for digits"); a run takes ~10 s on 2 cores
    # threads=1: a batch of 64 8x8 images is too small to share between cores, and two threads per process
    # spin-wait each other into a 10x slow-down when another process (a notebook, a second run) is busy too
    "digits": dict(model="digitsnet", eps=attack.EPS_PX["digits"], epochs=30, batch_size=64, lr_per_256=0.2, weight_decay=5e-4,
                   warmup_epochs=2.0, milestones=[15, 25], label_smoothing=0.0, check_size=256, threads=1),
    # cifar10: the common CIFAR adversarial-training recipe (Madry/Rice et al.), eps 8/255 as usual there;
    # ResNet-18; its speed on a GPU: benchmarks/bench_gpu.py (part 1, not yet run on a GPU)
    "cifar10": dict(model="cifar_resnet18", eps=attack.EPS_PX["cifar10"], epochs=100, batch_size=128, lr_per_256=0.2,
                    weight_decay=5e-4, warmup_epochs=5.0, milestones=[50, 75], label_smoothing=0.0,
                    check_size=1000, workers=4, val_size=10_000),
    # fashionmnist: eps 0.1 (25.5/255), the usual choice in the Fashion-MNIST literature; fashionnet (DigitsNet
    # with a stride-2 stem, 19.7k parameters); no augmentation; one thread: a run takes 3.6-5.3 min on one CPU
    # core (10 epochs of 20-39 s, the other core busy; README). DEVIATION from the paper's PGD-1 with step = eps:
    # PGD-2, step 1.25 x eps each (the usual 2.5 x eps / k), from a random start. With PGD-1 the training
    # overfitted its own attack here (seed 0, first 500 test images, worst case of stage 04: step eps 40.4%;
    # step 1.25 x eps, Wong et al. 2020's single-step recipe, 62.2% for ReLU but 29.8% for SiLU, whose PGD-10
    # check fell while training accuracy rose): PGD-1 compared the activations' catastrophic overfitting, not
    # SAT. --attack-steps 1 gives it back.
    "fashionmnist": dict(model="fashionnet", eps=attack.EPS_PX["fashionmnist"], attack_steps=2, step_x_eps=1.25, epochs=10, batch_size=128,
                         lr_per_256=0.2, weight_decay=5e-4, warmup_epochs=1.0, milestones=[6, 9], label_smoothing=0.0,
                         check_size=1000, threads=1, val_size=5000),
    # imagenet: the paper's ResNet-50, eps 4/255, PGD-1 step 4/255, 100 epochs; assumed, not in the paper
    # (docs/PAPER.md gives each setting's source): 80% random starts, SGD Nesterov 0.9, lr 0.1 x batch/256,
    # 5 warm-up epochs, /10 at 30/60/90, wd 1e-4, label smoothing 0.1
    "imagenet": dict(model="resnet50", eps=attack.EPS_PX["imagenet"], epochs=100, batch_size=256, lr_per_256=0.1, weight_decay=1e-4,
                     warmup_epochs=5.0, milestones=[30, 60, 90], label_smoothing=0.1, rand_start_prob=0.8,
                     check_size=1000, workers=8, image_size=224),
}

# Table 1's four rows (ReLU, smooth backward for nobody / attacker / optimizer / both) and Figure 3's seven
# activations (ReLU is shared by both): 10 runs per seed
SWEEP = [("relu", m) for m in SMOOTH_GRAD_MODES] + [(a, "none") for a in acts.ACTIVATIONS if a != "relu"]


def preset_config(dataset="digits", **overrides) -> Config:
    """The preset of `dataset` with `overrides` on top. A preset's step_x_eps sets the attack step to that
    multiple of eps (of the overridden eps too), unless attack_step is given."""
    if dataset not in PRESETS:
        raise sat_cli.UserError(f"unknown dataset {dataset!r}; accepted: {', '.join(PRESETS)}")
    settings = {"dataset": dataset, **PRESETS[dataset], **overrides}
    step_x_eps = settings.pop("step_x_eps", None)
    if step_x_eps and not settings.get("attack_step"):
        settings["attack_step"] = step_x_eps * settings["eps"]
    return validate(Config(**settings))


def validate(cfg: Config) -> Config:
    """Every bad setting is one UserError line naming the value and what is accepted (Config's ranges, names)."""
    sat_cli.check_settings(Config, vars(cfg))
    if cfg.smooth_grad != "none" and cfg.act != "relu":
        raise sat_cli.UserError(f"--smooth-grad {cfg.smooth_grad} applies to --act relu only, not {cfg.act!r}")
    sat_models.check_model_name(cfg.model, cfg.dataset)
    return cfg


def run_name(cfg: Config) -> str:
    """<dataset>_[<model>_]<act>[_sg-<mode>][_eps<eps>][_pgd<k>][_standard]_s<seed>. The model, eps and the training
    attack's steps are named where they are not the preset's, so that a run at another of these (`--eps 8` after
    `make run`, resnet101 beside resnet50) gets a folder of its own. A run differing in another setting shares the
    preset's folder, where stage 03 refuses to reuse or resume it (sat_training_run.decide)."""
    preset = preset_config(cfg.dataset)
    model = f"{cfg.model}_" if cfg.model != preset.model else ""
    sg = f"_sg-{cfg.smooth_grad}" if cfg.smooth_grad != "none" else ""
    eps = f"_eps{cfg.eps:g}" if cfg.eps != preset.eps else ""
    steps = f"_pgd{cfg.attack_steps}" if cfg.attack_steps != preset.attack_steps and cfg.attack != "none" else ""
    std = "_standard" if cfg.attack == "none" else ""
    return f"{cfg.dataset}_{model}{cfg.act}{sg}{eps}{steps}{std}_s{cfg.seed}"


# ----------------------------------------------------------------------------------------------------
# Optimizer, schedule, precision, the per-epoch check

def make_optimizer(model, cfg: Config):
    """SGD + Nesterov; weight decay on conv/linear weights only (the paper's code decays '.*/W' only)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    lr = cfg.lr_per_256 * cfg.batch_size / 256    # linear scaling rule (Goyal et al.): global batch
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True)


def make_scheduler(optimizer, cfg: Config, iters_per_epoch: int):
    """Per-iteration factor: linear warm-up over warmup_epochs, then /10 at each milestone epoch."""
    warm = max(1, int(cfg.warmup_epochs * iters_per_epoch))

    def factor(it):
        epoch = it / iters_per_epoch
        return min(1.0, (it + 1) / warm) * 0.1 ** sum(epoch >= m for m in cfg.milestones)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast_for(cfg: Config, device):
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    if amp == "off":
        return nullcontext, None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def evaluate_check(model, x, y, eps, autocast):
    """Clean and PGD-10 accuracy on the held-out check batch (stage 02's early-stopping evaluation)."""
    model.eval()
    with torch.no_grad(), autocast():
        clean = (model(x).argmax(1) == y).float().mean().item()
    with autocast():
        broken_at = attack.pgd_eval(model, x, y, eps, attack.default_step(eps, 10), 10)
    return clean, (broken_at == -1).float().mean().item()


# ----------------------------------------------------------------------------------------------------
# One training run

COLUMNS = sat_training_run.COLUMNS   # of log.csv and of the printed table


def train(cfg: Config, resume=False, force=False, stop_after_epoch=None, quiet=False) -> str:
    """Train one configuration to the end and return the path of its final.pt. resume=True continues from its
    checkpoint.pt if there is one, so the same command restarted after a crash at any moment ends with the
    weights of an uninterrupted run. `run` (sat_training_run.Run) holds that bookkeeping; skip it on a first read."""
    cfg = validate(cfg)
    run = sat_training_run.Run(cfg, run_name(cfg), cfg.out or os.path.join(OUT_DIR, run_name(cfg)),
                               resume, force, stop_after_epoch, quiet)   # skip, resume or start? torchrun's rank
    if run.finished:                                   # trained already, with the same settings
        return run.final_path
    cfg, device = run.cfg, run.device                  # a resumed run keeps its own settings
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # Data
    sat_seeds.seed_everything(cfg.seed)
    train_ds = sat_data.get_dataset(cfg.dataset, "train", cfg.data, cfg.image_size, cfg.download)
    cfg.num_classes = sat_data.num_classes_of(cfg.dataset, train_ds)
    if cfg.val_size:   # a validation split, held out of training: the check may choose an epoch (best.pt)
        plain = sat_data.get_dataset(cfg.dataset, "train", cfg.data, cfg.image_size, augment=False)
        train_ds, check_ds = sat_data.validation_split(train_ds, plain, cfg.val_size)
    else:              # no validation split: the first test images, watched but never used to choose
        check_ds = sat_data.get_dataset(cfg.dataset, "test", cfg.data, cfg.image_size, cfg.download)
    loader = run.loader(train_ds)                      # this process's share of each batch, shuffled by (seed, epoch)
    n_check = min(cfg.check_size, len(check_ds))       # images of the per-epoch check
    check = torch.utils.data.DataLoader(torch.utils.data.Subset(check_ds, range(n_check)), batch_size=n_check)
    x_check, y_check = (t.to(device) for t in next(iter(check)))

    # Model, optimizer, schedule
    model = sat_models.build_model(dataclasses.asdict(cfg)).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, loader.steps_per_epoch)
    autocast, scaler = autocast_for(cfg, device)
    fwd_model, attack_model = run.restore(model, optimizer, scheduler, scaler)   # resume; DDP; torch.compile

    eps = attack.px(cfg.eps)
    step = attack.px(cfg.attack_step) if cfg.attack_step > 0 else attack.default_step(eps, cfg.attack_steps)
    steps = cfg.attack_steps if cfg.attack == "pgd" else 0
    run.say(f"\n{run.name}: {cfg.model} act={cfg.act} smooth_grad={cfg.smooth_grad} attack={cfg.attack}"
            f"{'-' + str(steps) if steps else ''} eps={cfg.eps:g}/255 step={step * 255:.2f}/255"
            f"{f' {cfg.image_size}px' if cfg.dataset == 'imagenet' else ''} on {device}, "
            f"{run.world} process(es), {loader.steps_per_epoch} steps/epoch")
    run.say(f"per-epoch check: clean and PGD-10 accuracy on {n_check} " + (
        f"validation images (held out of training); best.pt keeps the epoch with the best PGD-10" if cfg.val_size else
        f"test images: a monitor only, no epoch is chosen by it (--val-size N holds out a validation split)"))
    run.say(f"{'epoch':>5} {'lr':>8} {'loss':>7} {'adv_acc':>8} {'chk_clean':>9} {'chk_pgd10':>9} {'sec':>6}")
    for epoch in range(run.start_epoch, cfg.epochs):
        for i, (x, y) in run.batches(loader, epoch):  # after a restart: from the step the checkpoint had reached
            x = x.to(device, non_blocking=True).to(memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            loss, logits = smooth_grad_step(fwd_model, x, y, optimizer, eps, step, steps, cfg.rand_start_prob, cfg.smooth_grad,
                                            label_smoothing=cfg.label_smoothing, attack_model=attack_model,
                                            autocast=autocast, scaler=scaler)   # Table 1's switch around Eq. 1
            scheduler.step()
            run.after_step(i, loss, logits, y)        # running loss and accuracy; stop if diverged; mid-epoch checkpoint
        check_clean, check_pgd10 = evaluate_check(model, x_check, y_check, eps, autocast)
        row, warning = run.end_epoch(optimizer.param_groups[0]["lr"], check_clean, check_pgd10)   # + collapse check
        run.say(f"{row['epoch']:>5} {row['lr']:>8.4f} {row['loss']:>7.4f} {100 * row['train_adv_acc']:>7.1f}% "
                f"{100 * check_clean:>8.1f}% {100 * check_pgd10:>8.1f}% {row['seconds']:>6.1f}{warning}")
        if run.save():                                 # checkpoint.pt, log.csv; True: --stop-after-epoch reached
            return run.ckpt_path
    return run.finish()                                # final.pt; torchrun: all ranks hold the same weights?


# ----------------------------------------------------------------------------------------------------
# Command line: a sweep of configurations (default: everything the paper compares, on digits, seed 0)

def parse_args(argv=None):
    p = sat_cli.ArgumentParser(
        description="(Smooth) adversarial training; see the module docstring. Each setting comes from Config.",
        epilog="example, ReLU, Table 1's 'both' row and SiLU, seeds 0-2 (9 runs):\n"
               "  python 03_adv_train.py --act relu silu --smooth-grad none both --seeds 3",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sat_cli.add_settings(p, Config, PRESETS, skip=("out",), many=("model", "act", "smooth_grad"), defaults={
        "act": "all, one run each", "smooth_grad": "all four with relu", "seed": "the seeds of --seeds",
        "image_size": "the model's usual one (224 for ResNets)",
        "attack_step": "0; the fashionmnist preset: 1.25 x eps"})
    p.set_defaults(dataset="digits")
    sat_sweep.add_sweep_flags(p)
    return p.parse_args(argv)


def main(argv=None):
    sat_sweep.sweep(sys.modules[__name__], parse_args(argv))


if __name__ == "__main__":
    sat_cli.run_cli(main, interrupted="the finished runs and each other run's last checkpoint are kept",
                    resume_flag="--resume")
