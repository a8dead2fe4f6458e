"""Stage 03: (smooth) adversarial training, from 8x8 digits on a laptop CPU to ResNet-50 on ImageNet on GPUs.

Paper: arXiv:2006.14536, Section 2 (adversarial training, Eq. 1), Section 3 (Table 1: ReLU forward with a
smooth backward for the attacker and/or the optimizer), Section 4 (Figure 3: smooth activations). The
paper's training code was never released; this file is a from-scratch implementation of its recipe.

    min_theta E_{(x,y)} [ max_{||delta||_inf <= eps} L(theta, x + delta, y) ]            (Eq. 1)

Each step: (1) the attacker (stage 02's pgd, PGD-1 by default) maximises the loss over delta, with BatchNorm
statistics frozen; (2) the optimizer takes one SGD step on the loss at x + delta. SAT = the same loop with
a smooth activation (stage 01) instead of ReLU.

Run it:
    python 03_adv_train.py                   # digits, CPU, ~2.5 min: Table 1's 4 rows + Figure 3's 7 activations
                                             # (10 runs of 11-17 s on 2 cores)
    python 03_adv_train.py --act silu        # narrow: one activation;  --smooth-grad both: one Table 1 row
    python 03_adv_train.py --seeds 15        # seeds 0..14 of everything (the README's study, ~22 min)
    python 03_adv_train.py --dataset fashionmnist --data /usr/share/datasets/fashion-mnist --act silu
                                             # one CPU core, ~4 min (preset 'fashionmnist', 28x28 grey)
    python 03_adv_train.py --dataset cifar10 --data data --download --act silu          # one GPU, ~ResNet-18
    torchrun --nproc_per_node 8 03_adv_train.py --dataset imagenet --data /path/to/imagenet --act silu
                                             # the paper's ResNet-50 recipe (preset 'imagenet')
Both cores: a sweep of several runs trains `--jobs N` of them at once (default: one per core), one process
and one torch thread each, with the same weights as `--jobs 1`; each run's printout then goes to its
train.log, and one line per finished run to the screen.
Crashes: `--resume` continues each run from its checkpoint.pt (or starts it when there is none), and
`--checkpoint-every N` also checkpoints every N steps inside an epoch; the same command run again after a
kill at any moment (or `torchrun --max-restarts N ... --resume`) ends with an uninterrupted run's weights.
Writes, per run (runs/03_adv_train/<dataset>_[<model>_]<act>[_sg-<mode>]_s<seed>/; the model is named
when it is not the preset's):
    checkpoint.pt   every epoch and every --checkpoint-every steps (atomic): model, optimizer, scheduler,
                    scaler, epoch (+ steps into the next), config, rng, every process's BN statistics, metrics
    final.pt        the same dict once the run has finished: stage 04 evaluates every final.pt it finds
    log.csv         one row per epoch (the columns of the printed table)
    train.log       with --jobs > 1: the run's printout
Speed figures (adversarial vs standard training step): python benchmarks/bench_train.py
"""
import csv
import dataclasses
import importlib
import itertools
import math
import os
import sys
import time
from contextlib import nullcontext, redirect_stdout
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

import sat_data
import sat_models
import sat_plumbing

acts = importlib.import_module("01_activations")
attack = importlib.import_module("02_pgd")

OUT_DIR = os.path.join(sat_plumbing.RUNS_DIR, "03_adv_train")
SMOOTH_GRAD_MODES = ("none", "attacker", "optimizer", "both")
ATTACKS = ("pgd", "none")

# What the paper compares: Table 1's four rows (ReLU, smooth backward for nobody / attacker / optimizer /
# both) and Figure 3's seven activations (ReLU is shared by both). 10 runs per seed.
SWEEP = [("relu", m) for m in SMOOTH_GRAD_MODES] + [(a, "none") for a in acts.ACTIVATIONS if a != "relu"]


# ----------------------------------------------------------------------------------------------------
# Settings

@dataclass
class Config:
    # data and model
    dataset: str = "digits"        # digits | cifar10 | fashionmnist | imagenet
    data: str = "data"             # folder of cifar10 (holds cifar-10-batches-py/), fashionmnist (its 4 .gz files) or imagenet (train/, val/)
    download: bool = False         # cifar10, fashionmnist: download into --data if missing
    model: str = "digitsnet"       # digitsnet | fashionnet | cifar_resnet18 | any torchvision model (resnet50, ...)
    width: int = 16                # digitsnet, fashionnet only: channels of the first block
    image_size: int = 224          # imagenet only: training crop / evaluation crop, pixels
    num_classes: int = 10          # filled from the data set
    act: str = "relu"              # activation by name (stage 01)
    smooth_grad: str = "none"      # relu only: who gets the smooth backward: none|attacker|optimizer|both
    # attack used to craft training examples (stage 02)
    attack: str = "pgd"            # pgd | none (standard training)
    eps: float = 64.0              # L-inf radius, pixel units (64 = 64/255)
    attack_steps: int = 1          # PGD-k during training; the paper: 1
    attack_step: float = 0.0       # step size, pixel units; 0 = stage 02's default_step (= eps for PGD-1)
    rand_start_prob: float = 1.0   # share of batches starting from a random point (paper's code: 0.8)
    # optimisation (paper, ImageNet: SGD Nesterov 0.9, lr 0.1 x batch/256, 5 warm-up epochs, /10 at 30/60/90)
    epochs: int = 30               # passes over the training set
    steps_per_epoch: int = 0       # 0 = the whole training set each epoch; N = its first N batches only
    batch_size: int = 64           # GLOBAL batch (split over the processes of a torchrun job)
    lr_per_256: float = 0.2        # learning rate for a batch of 256; actual lr = lr_per_256 * batch/256
    momentum: float = 0.9          # Nesterov momentum
    weight_decay: float = 5e-4     # on conv/linear weights only (not BN, biases, SmoothReLU alpha)
    warmup_epochs: float = 2.0     # linear warm-up from ~0 to lr, per iteration
    milestones: list = field(default_factory=lambda: [15, 25])   # epochs at which lr is divided by 10
    label_smoothing: float = 0.0   # paper (ImageNet): 0.1
    # running
    seed: int = 0                  # seeds weights, data order and random starts
    device: str = "auto"           # auto (CUDA if present) | cpu | cuda | cuda:N
    amp: str = "auto"              # mixed precision: auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    channels_last: bool = False    # NHWC memory layout (faster convs on recent GPUs)
    compile: bool = False          # torch.compile the model
    workers: int = 0               # DataLoader worker processes (imagenet: 8+ per GPU)
    threads: int = 0               # CPU threads for torch; 0 = torch's default (one per core)
    check_size: int = 256          # held-out test images for the per-epoch clean / PGD-10 check
    checkpoint_every: int = 0      # also write checkpoint.pt every N steps inside an epoch (0 = at epoch ends)
    out: str = ""                  # run folder; empty = runs/03_adv_train/<run name>


PRESETS = {
    # digits: chosen by the small study in the README ("Choosing eps for digits"); a run takes ~10 s on 2 cores
    # threads=1: a batch of 64 8x8 images is too small to share between cores, and two threads per process
    # spin-wait each other into a 10x slow-down when another process (a notebook, a second run) is busy too
    "digits": dict(model="digitsnet", eps=attack.EPS_PX["digits"], epochs=30, batch_size=64, lr_per_256=0.2, weight_decay=5e-4,
                   warmup_epochs=2.0, milestones=[15, 25], label_smoothing=0.0, check_size=256, threads=1),
    # cifar10: the common CIFAR adversarial-training recipe (Madry/Rice et al.), eps 8/255 as usual there;
    # ResNet-18 on one GPU: ~1-2 min per epoch with PGD-1
    "cifar10": dict(model="cifar_resnet18", eps=attack.EPS_PX["cifar10"], epochs=100, batch_size=128, lr_per_256=0.2,
                    weight_decay=5e-4, warmup_epochs=5.0, milestones=[50, 75], label_smoothing=0.0,
                    check_size=1000, workers=4),
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
                         check_size=1000, threads=1),
    # imagenet: the paper's recipe (../shared/PAPER.md), ResNet-50, eps 4/255, PGD-1 step 4/255, 80% random
    # starts, 100 epochs, SGD Nesterov 0.9, lr 0.1 x batch/256, 5 warm-up epochs, /10 at 30/60/90, wd 1e-4,
    # label smoothing 0.1
    "imagenet": dict(model="resnet50", eps=attack.EPS_PX["imagenet"], epochs=100, batch_size=256, lr_per_256=0.1, weight_decay=1e-4,
                     warmup_epochs=5.0, milestones=[30, 60, 90], label_smoothing=0.1, rand_start_prob=0.8,
                     check_size=1000, workers=8, image_size=224),
}


# the settings that change what a run learns: a finished run is reused only if all of them match
TRAINING_KEYS = ("dataset", "model", "width", "image_size", "act", "smooth_grad", "attack", "eps", "attack_steps",
                 "attack_step", "rand_start_prob", "epochs", "steps_per_epoch", "batch_size", "lr_per_256", "momentum", "weight_decay",
                 "warmup_epochs", "milestones", "label_smoothing", "seed")


def preset_config(dataset="digits", **overrides) -> Config:
    """The preset of `dataset` with `overrides` on top. A preset's step_x_eps sets the attack step to that
    multiple of eps (of the overridden eps too), unless attack_step is given."""
    if dataset not in PRESETS:
        raise sat_plumbing.UserError(f"unknown dataset {dataset!r}; accepted: {', '.join(PRESETS)}")
    settings = {"dataset": dataset, **PRESETS[dataset], **overrides}
    step_x_eps = settings.pop("step_x_eps", None)
    if step_x_eps and not settings.get("attack_step"):
        settings["attack_step"] = step_x_eps * settings["eps"]
    return validate(Config(**settings))


def run_name(cfg: Config) -> str:
    """<dataset>_[<model>_]<act>[_sg-<mode>][_standard]_s<seed>; the model is named when it is not the
    preset's own, so that resnet50 and resnet101 runs of one activation get folders of their own."""
    model = f"{cfg.model}_" if cfg.model != PRESETS.get(cfg.dataset, {}).get("model") else ""
    sg = f"_sg-{cfg.smooth_grad}" if cfg.smooth_grad != "none" else ""
    std = "_standard" if cfg.attack == "none" else ""
    return f"{cfg.dataset}_{model}{cfg.act}{sg}{std}_s{cfg.seed}"


def check_act_and_mode(act: str, smooth_grad: str):
    """One UserError line for an unknown activation (stage 01's list) or smooth-gradient mode."""
    try:
        acts.check_activation_name(act)
    except ValueError as e:
        raise sat_plumbing.UserError(str(e))
    if smooth_grad not in SMOOTH_GRAD_MODES:
        raise sat_plumbing.UserError(f"unknown --smooth-grad {smooth_grad!r}; accepted: {', '.join(SMOOTH_GRAD_MODES)}")


# Every numeric setting's accepted range: (lowest, highest[, lowest excluded]). NaN and infinity never pass.
RANGES = {
    "width": (1, 4096), "image_size": (16, 4096), "attack_steps": (1, 100_000), "rand_start_prob": (0, 1),
    "epochs": (1, 100_000), "steps_per_epoch": (0, math.inf),
    "batch_size": (1, math.inf), "lr_per_256": (0, math.inf, True), "momentum": (0, 1), "weight_decay": (0, 1),
    "warmup_epochs": (0, 100_000), "label_smoothing": (0, 1), "seed": (0, 2**32 - 1), "workers": (0, 1024),
    "threads": (0, 4096), "check_size": (1, math.inf), "checkpoint_every": (0, math.inf),
}


def validate(cfg: Config) -> Config:
    """Every bad setting is one UserError line naming the value and what is accepted."""
    if cfg.dataset not in sat_data.DATASETS:
        raise sat_plumbing.UserError(f"unknown dataset {cfg.dataset!r}; accepted: {', '.join(sat_data.DATASETS)}")
    check_act_and_mode(cfg.act, cfg.smooth_grad)
    if cfg.smooth_grad != "none" and cfg.act != "relu":
        raise sat_plumbing.UserError(f"--smooth-grad {cfg.smooth_grad} applies to --act relu only, not {cfg.act!r}")
    if cfg.attack not in ATTACKS:
        raise sat_plumbing.UserError(f"unknown --attack {cfg.attack!r}; accepted: {', '.join(ATTACKS)}")
    attack.check_px("--eps", cfg.eps)
    attack.check_px("--attack-step", cfg.attack_step, zero_ok=True)
    for name, (lo, hi, *lo_open) in RANGES.items():
        sat_plumbing.check_number("--" + name.replace("_", "-"), getattr(cfg, name), lo, hi, bool(lo_open))
    for m in cfg.milestones:
        sat_plumbing.check_number("--milestones", m, 1, RANGES["epochs"][1])
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise sat_plumbing.UserError(f"unknown --amp {cfg.amp!r}; accepted: auto, bf16, fp16, off")
    sat_models.check_model_name(cfg.model, cfg.dataset)
    return cfg


# ----------------------------------------------------------------------------------------------------
# The training step: the one piece of this file to copy into your own code

def adversarial_training_step(model, x, y, optimizer, eps, step, steps, rand_start_prob=1.0,
                              smooth_grad="none", label_smoothing=0.0, scaler=None, autocast=nullcontext,
                              attack_model=None):
    """One step of (smooth) adversarial training. x: (B, C, H, W) pixels in [0, 1]; y: (B,).

    Inner max: x_adv = PGD(x) with the smooth backward on iff smooth_grad in (attacker, both) (Table 1).
    Outer min: SGD on L(f(x_adv), y) with the smooth backward on iff smooth_grad in (optimizer, both).
    steps = 0 means standard training (x_adv = x). `attack_model` is the model the attacker queries: the
    bare module under DistributedDataParallel, so the attack neither syncs gradients nor buffers.
    Returns (loss, logits on x_adv), detached.
    """
    if steps > 0:
        with acts.smooth_backward(model, smooth_grad in ("attacker", "both")), autocast():
            x_adv = attack.pgd(attack_model or model, x, y, eps, step, steps, rand_start_prob)   # BN frozen inside
    else:
        x_adv = x
    model.train()
    with acts.smooth_backward(model, smooth_grad in ("optimizer", "both")):
        with autocast():
            logits = model(x_adv)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:        # fp16 needs loss scaling; bf16 and fp32 do not
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    return loss.detach(), logits.detach()


# ----------------------------------------------------------------------------------------------------
# Plumbing: distributed set-up, optimizer, schedule

def dist_info():
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) for a plain `python` run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def restart_safe_store(rank):
    """The store the processes of a torchrun job meet in, under a prefix of their own for each restart.
    torch's default (env://) puts the workers that `torchrun --max-restarts N` starts after a crash where they
    read the dead workers' addresses (seen with torch 2.14 and gloo: 'Connection refused', the job fails)."""
    from datetime import timedelta
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise sat_plumbing.UserError("WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set: start several processes with torchrun")
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"   # torchrun hosts the store itself
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=rank == 0 and not agent_store,
                          timeout=timedelta(minutes=30))
    return dist.PrefixStore(f"sat/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


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

COLUMNS = ["epoch", "lr", "loss", "train_adv_acc", "check_clean_acc", "check_pgd10_acc", "seconds"]


class EpochSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (its shuffle depends only on the seed and the epoch, so a resumed run sees the
    same batches as an uninterrupted one) that serves samples [first, last) of this process's epoch: a run
    resumed in the middle of an epoch starts after the batches it has already trained on, without loading
    them, and --steps-per-epoch stops an epoch early."""
    first, last = 0, None

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.first, self.last)

    def __len__(self):
        return len(range(super().__len__())[self.first:self.last])


def train(cfg: Config, resume=False, force=False, stop_after_epoch=None, quiet=False) -> str:
    """Train one configuration to the end, or resume it. Returns the path of its final.pt.

    resume=True continues from checkpoint.pt when there is one (written at every epoch end, and every
    cfg.checkpoint_every steps), and starts from scratch when there is none yet: so the same command,
    restarted after a crash at any moment (`torchrun --max-restarts N ... --resume`), ends with the weights
    an uninterrupted run would have."""
    from tqdm import tqdm
    cfg = validate(cfg)
    rank, world, local_rank = dist_info()
    cfg = Config(**sat_plumbing.smoke_settings("train", dataclasses.asdict(cfg)))   # SAT_SMOKE=1: seconds of work
    if cfg.batch_size % world:
        raise sat_plumbing.UserError(f"--batch-size {cfg.batch_size} (global) must divide by the {world} processes")
    device = sat_plumbing.pick_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    run_dir = cfg.out or os.path.join(OUT_DIR, run_name(cfg))
    ckpt_path, final_path = os.path.join(run_dir, "checkpoint.pt"), os.path.join(run_dir, "final.pt")
    say = print if rank == 0 else (lambda *a, **k: None)
    if rank == 0:
        sat_plumbing.check_out_dir(run_dir)

    # Decide between a fresh start, a resume and a skip BEFORE anything is written.
    state = None
    if os.path.isfile(final_path) and not force:
        done = sat_plumbing.load_checkpoint(final_path)["config"]
        diff = [f"{k} {done.get(k)!r} -> {getattr(cfg, k)!r}" for k in TRAINING_KEYS if done.get(k) != getattr(cfg, k)]
        if diff:
            raise sat_plumbing.UserError(f"{final_path!r} was trained with other settings ({', '.join(diff)}); --force retrains it, or choose another --out")
        say(f"{run_name(cfg)}: finished already ({final_path}); --force retrains it")
        return final_path
    if resume and os.path.isfile(ckpt_path):
        state = sat_plumbing.load_checkpoint(ckpt_path)     # corrupt / foreign: one line, exit 2, the file kept
        if state.get("kind") != "train":
            raise sat_plumbing.UserError(f"{ckpt_path!r} is not a training checkpoint of stage 03")
        cfg = Config(**state["config"])               # a resumed run keeps its own settings
    elif resume:
        say(f"{run_name(cfg)}: no checkpoint at {ckpt_path} yet, starting from scratch")
    elif os.path.isfile(ckpt_path) and not force:
        raise sat_plumbing.UserError(f"{ckpt_path!r} holds an unfinished run; pass --resume to continue it or --force to start over")
    if rank == 0:
        sat_plumbing.remove_stale_temporaries(run_dir)      # left by a process killed while writing a checkpoint

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Data
    sat_plumbing.seed_everything(cfg.seed)
    train_ds = sat_data.get_dataset(cfg.dataset, "train", cfg.data, cfg.image_size, cfg.download)
    test_ds = sat_data.get_dataset(cfg.dataset, "test", cfg.data, cfg.image_size, cfg.download)
    cfg.num_classes = sat_data.num_classes_of(cfg.dataset, train_ds)
    # DistributedSampler also for one process: the shuffle depends only on (seed, epoch), so a resumed run
    # sees the same batches as an uninterrupted one
    sampler = EpochSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    per_batch = cfg.batch_size // world                # images per step and process
    loader = torch.utils.data.DataLoader(train_ds, batch_size=per_batch, sampler=sampler,
                                         num_workers=cfg.workers, pin_memory=device.type == "cuda",
                                         drop_last=True, persistent_workers=cfg.workers > 0)
    steps_per_epoch = min(len(loader), cfg.steps_per_epoch or len(loader))
    if steps_per_epoch == 0:
        raise sat_plumbing.UserError(f"training set of {len(train_ds)} images is smaller than one batch of {per_batch}")
    n_check = min(cfg.check_size, len(test_ds))
    check = torch.utils.data.DataLoader(torch.utils.data.Subset(test_ds, range(n_check)), batch_size=n_check)
    x_check, y_check = (t.to(device) for t in next(iter(check)))

    # Model, optimizer, schedule
    model = sat_models.build_model(dataclasses.asdict(cfg)).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    autocast, scaler = autocast_for(cfg, device)
    start_epoch, history, partial = 0, [], None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"], list(state["metrics"]["history"])
        partial = state.get("partial")               # set when written in the middle of an epoch
        sat_plumbing.set_rng_state(state["rng"])
        say(f"{run_name(cfg)}: resumed from {ckpt_path} after epoch {start_epoch}"
            + (f" and {partial['step']} steps of epoch {start_epoch + 1}" if partial else ""))
    bare = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if state is not None and state.get("rank_buffers"):   # after DDP, which copies rank 0's buffers to all
            with torch.no_grad():
                for buf, saved in zip(bare.buffers(), state["rank_buffers"][rank]):
                    buf.copy_(saved)
    fwd_model = torch.compile(model) if cfg.compile else model
    attack_model = torch.compile(bare) if cfg.compile else bare

    eps = attack.px(cfg.eps)
    step = attack.px(cfg.attack_step) if cfg.attack_step > 0 else attack.default_step(eps, cfg.attack_steps)
    steps = cfg.attack_steps if cfg.attack == "pgd" else 0
    say(f"\n{run_name(cfg)}: {cfg.model} act={cfg.act} smooth_grad={cfg.smooth_grad} attack={cfg.attack}"
        f"{'-' + str(steps) if steps else ''} eps={cfg.eps:g}/255 step={step * 255:.2f}/255"
        f"{f' {cfg.image_size}px' if cfg.dataset == 'imagenet' else ''} on {device}, "
        f"{world} process(es), {steps_per_epoch} steps/epoch")

    def checkpoint(epochs_done, partial=None):
        """Everything needed to continue: after `epochs_done` epochs, plus `partial` steps of the next one.
        Called by every process (the BN statistics of all are gathered); rank 0 writes the result."""
        return {"kind": "train", "model": bare.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                "epoch": epochs_done, "partial": partial, "config": dataclasses.asdict(cfg), "rng": sat_plumbing.rng_state(),
                "rank_buffers": gather_buffers(bare, world),
                "metrics": {"history": history, "catastrophic_overfitting_epoch": co_epoch}}
    say(f"{'epoch':>5} {'lr':>8} {'loss':>7} {'adv_acc':>8} {'chk_clean':>9} {'chk_pgd10':>9} {'sec':>6}")

    best_pgd10, co_epoch = 0.0, None
    ckpt = state   # a resumed run that had finished its last epoch goes straight to writing final.pt
    for row in history:
        best_pgd10 = max(best_pgd10, row["check_pgd10_acc"])
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        done = partial["step"] if partial else 0      # steps of this epoch trained before a restart
        sampler.first, sampler.last = done * per_batch, steps_per_epoch * per_batch
        loss_sum = torch.tensor(partial["loss_sum"] if partial else 0.0, device=device)
        correct = torch.tensor(partial["correct"] if partial else 0.0, device=device)
        seen = partial["seen"] if partial else 0
        t0 = time.time() - (partial["seconds"] if partial else 0.0)
        batches = iter(loader)   # draws the loader's seed from the global RNG, as the uninterrupted run did ...
        if partial:              # ... which had then trained `done` steps: continue from the RNG as it was then
            sat_plumbing.set_rng_state(state["rng"])
        partial = None
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=quiet or rank != 0,
                   initial=done, total=steps_per_epoch)
        for i, (x, y) in enumerate(bar, start=done):
            x = x.to(device, non_blocking=True).to(memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            loss, logits = adversarial_training_step(
                fwd_model, x, y, optimizer, eps, step, steps, cfg.rand_start_prob, cfg.smooth_grad,
                cfg.label_smoothing, scaler, autocast, attack_model)
            scheduler.step()
            loss_sum += loss * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if i % 20 == 0 or i == steps_per_epoch - 1:   # one host sync every 20 steps, not every step
                mean_loss = loss_sum.item() / seen
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(f"{run_name(cfg)}: loss became {mean_loss} in epoch {epoch + 1}; stopped. "
                                           f"The last good checkpoint (if any) is kept at {ckpt_path}. Lower --lr-per-256?")
                bar.set_postfix(loss=f"{mean_loss:.3f}")
            if cfg.checkpoint_every and (i + 1) % cfg.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                mid = checkpoint(epoch, {"step": i + 1, "loss_sum": loss_sum.item(), "correct": correct.item(),
                                         "seen": seen, "seconds": time.time() - t0})
                if rank == 0:
                    sat_plumbing.save_checkpoint(mid, ckpt_path)
        check_clean, check_pgd10 = evaluate_check(bare, x_check, y_check, eps, autocast)
        row = dict(epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"], loss=loss_sum.item() / seen,
                   train_adv_acc=correct.item() / seen, check_clean_acc=check_clean,
                   check_pgd10_acc=check_pgd10, seconds=time.time() - t0)
        history.append(row)
        # Catastrophic overfitting (Wong et al. 2020): the multi-step (PGD-10) accuracy collapses while the
        # single-step training accuracy keeps rising: the model has learned to mask the one-step attack.
        flag = ""
        if steps and check_pgd10 < best_pgd10 - 0.2 and len(history) > 1 and row["train_adv_acc"] > history[-2]["train_adv_acc"]:
            co_epoch = co_epoch or epoch + 1
            flag = "  <- catastrophic overfitting? PGD-10 collapsed while train accuracy rose"
        best_pgd10 = max(best_pgd10, check_pgd10)
        say(f"{row['epoch']:>5} {row['lr']:>8.4f} {row['loss']:>7.4f} {100 * row['train_adv_acc']:>7.1f}% "
            f"{100 * check_clean:>8.1f}% {100 * check_pgd10:>8.1f}% {row['seconds']:>6.1f}{flag}")
        ckpt = checkpoint(epoch + 1)
        if rank == 0:
            sat_plumbing.save_checkpoint(ckpt, ckpt_path)
            write_csv(os.path.join(run_dir, "log.csv"), history)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            say(f"{run_name(cfg)}: stopping after epoch {epoch + 1} as asked (--stop-after-epoch); --resume continues")
            return ckpt_path
    if rank == 0:
        sat_plumbing.save_checkpoint({**ckpt, "finished": True}, final_path)
        total = sum(r["seconds"] for r in history)
        say(f"{run_name(cfg)}: done in {total:.1f} s -> {final_path}"
            + (f"  (catastrophic overfitting flagged at epoch {co_epoch})" if co_epoch else ""))
    if world > 1:
        assert_ranks_agree(bare, world, device)
        say(f"{run_name(cfg)}: all {world} ranks hold identical weights")
    return final_path


def gather_buffers(model, world):
    """Every process's buffers (BatchNorm statistics), for an exact resume of a torchrun job; None for one
    process. DDP overwrites them with rank 0's at the start of each training forward, but each process then
    updates its own with its own batch and attacks with those: rank 0's alone would not restore the others."""
    if world == 1:
        return None
    per_buffer = []
    for buf in model.buffers():
        copies = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(copies, buf.detach().contiguous())
        per_buffer.append([c.cpu() for c in copies])
    return [[copies[r] for copies in per_buffer] for r in range(world)]


def assert_ranks_agree(model, world, device):
    """DDP keeps the replicas identical by averaging gradients; check it, since a bug there (a parameter
    outside DDP, a rank-dependent branch) would silently fork the models instead of failing."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()]).to(device)
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    same = torch.tensor([1.0 if torch.equal(flat, ref) else 0.0], device=device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    if same.item() != 1.0:
        raise RuntimeError(f"the {world} ranks ended with different weights: the DistributedDataParallel set-up is broken")


class TrainingDiverged(Exception):
    pass


def write_csv(path, history):
    """log.csv, written to a temporary file and renamed over the old one: a kill never leaves half a file."""
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(history)
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------------------
# Command line: a sweep of configurations (default: everything the paper compares, on digits, seed 0)

def parse_args(argv=None):
    p = sat_plumbing.ArgumentParser(description="(Smooth) adversarial training; see the module docstring.")
    p.add_argument("--dataset", default="digits", help=f"one of {', '.join(sat_data.DATASETS)}")
    p.add_argument("--data", default=None, help="folder of cifar10 / fashionmnist / imagenet (default: data)")
    p.add_argument("--download", action="store_true", help="cifar10, fashionmnist: download into --data if missing")
    p.add_argument("--model", nargs="+", default=None, help="digitsnet | fashionnet | cifar_resnet18 | torchvision names (resnet50 resnet101 ...)")
    p.add_argument("--width", type=int, default=None, help="digitsnet / fashionnet channels (default 16)")
    p.add_argument("--image-size", type=int, default=None, help="imagenet crop size in pixels (default: the model's usual one, 224 for ResNets)")
    p.add_argument("--act", nargs="+", default=None, help=f"activations to train (default: all); of {', '.join(acts.ACTIVATIONS)}")
    p.add_argument("--smooth-grad", nargs="+", default=None, help=f"relu only: {', '.join(SMOOTH_GRAD_MODES)} (default: all four)")
    p.add_argument("--seeds", type=int, default=1, help="train seeds 0..N-1 of every configuration")
    p.add_argument("--seed", type=int, default=None, help="train this one seed only")
    p.add_argument("--attack", default=None, help="pgd (default) | none (standard training)")
    p.add_argument("--eps", type=float, default=None, help="L-inf radius in pixel units (4 = 4/255)")
    p.add_argument("--attack-steps", type=int, default=None, help="PGD-k during training (default: the preset's; 1, the paper's, except fashionmnist: 2)")
    p.add_argument("--attack-step", type=float, default=None, help="attack step size, pixel units (default: max(eps/4, eps/k); fashionmnist: 1.25 x eps)")
    p.add_argument("--rand-start-prob", type=float, default=None, help="share of batches with a random start (paper's code: 0.8)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="train on the first N batches of each epoch only (0 = all)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size")
    p.add_argument("--lr-per-256", type=float, default=None, help="lr for a batch of 256 (scaled linearly)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-epochs", type=float, default=None)
    p.add_argument("--milestones", type=int, nargs="*", default=None, help="epochs at which lr /= 10")
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", default=None, help="auto (bf16 on CUDA) | bf16 | fp16 | off")
    p.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory layout")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers per process")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (0 = one per core; digits default 1)")
    p.add_argument("--check-size", type=int, default=None, help="held-out images for the per-epoch check")
    p.add_argument("--out", default=None, help="runs folder (default runs/03_adv_train)")
    p.add_argument("--resume", action="store_true", help="continue each run from its checkpoint.pt; start it if there is none")
    p.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps within an epoch (0 = epoch ends only)")
    p.add_argument("--force", action="store_true", help="retrain runs that exist already")
    p.add_argument("--stop-after-epoch", type=int, default=None, help="stop after this epoch (then --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--jobs", type=int, default=None, help="runs trained at once, one process and one torch thread each "
                   "(default: one per core; 1 under torchrun); each run's output then goes to its train.log")
    return p.parse_args(argv)


def configs_from_args(args) -> list:
    """The list of Configs the command line asks for: the sweep, narrowed by --act / --smooth-grad."""
    if args.dataset not in PRESETS:
        raise sat_plumbing.UserError(f"unknown dataset {args.dataset!r}; accepted: {', '.join(PRESETS)}")
    # names are checked here, before the sweep is narrowed: an unknown one would silently select nothing
    for a in args.act or []:
        check_act_and_mode(a, "none")
    for m in args.smooth_grad or []:
        check_act_and_mode("relu", m)
    smooth_modes = [m for m in args.smooth_grad or [] if m != "none"]   # 'none' suits every activation
    if smooth_modes and args.act and "relu" not in args.act:
        raise sat_plumbing.UserError(f"--smooth-grad {' '.join(smooth_modes)} applies to --act relu only, not {' '.join(args.act)}")
    sat_plumbing.check_number("--seeds", args.seeds, 1, 100_000)
    if args.seed is not None:
        sat_plumbing.check_number("--seed", args.seed, *RANGES["seed"])
    if args.stop_after_epoch is not None:
        sat_plumbing.check_number("--stop-after-epoch", args.stop_after_epoch, 1, RANGES["epochs"][1])
    sweep = [(a, m) for a, m in SWEEP if (args.act is None or a in args.act)
             and (args.smooth_grad is None or m in args.smooth_grad)]
    if args.attack == "none":       # standard training: the smooth-backward rows do not apply
        sweep = [(a, m) for a, m in sweep if m == "none"]
    if not sweep:
        raise sat_plumbing.UserError("--attack none (standard training) leaves no run to do with --smooth-grad other than none")
    overrides = {k: v for k, v in vars(args).items() if v is not None and k in Config.__dataclass_fields__
                 and k not in ("act", "smooth_grad", "dataset", "out", "seed", "model")}
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    seeds = sat_plumbing.smoke_settings("train", {"seeds": seeds})["seeds"]   # SAT_SMOKE=1: two show a sweep works
    models = args.model or [PRESETS[args.dataset]["model"]]
    out_root = sat_plumbing.check_out_dir(args.out) if args.out else OUT_DIR
    cfgs = []
    for model in models:
        size = {}
        if args.dataset == "imagenet" and args.image_size is None:   # each model at its usual resolution
            size = {"image_size": sat_models.usual_image_size(sat_models.check_model_name(model, args.dataset))}
        for seed in seeds:
            for a, m in sweep:
                cfg = preset_config(args.dataset, model=model, act=a, smooth_grad=m, seed=seed, **size, **overrides)
                cfg.out = os.path.join(out_root, run_name(cfg))
                cfgs.append(cfg)
    return cfgs


def train_logged(job):
    """One run of a --jobs sweep, in a worker process: train(cfg, **kw) with its printout in <run>/train.log.
    Returns (run name, seconds, the log's last line)."""
    cfg, kw = job
    t = time.time()
    log = os.path.join(sat_plumbing.check_out_dir(cfg.out), "train.log")
    with open(log, "a") as f, redirect_stdout(f):
        train(cfg, **kw, quiet=True)
    name = run_name(cfg)
    with open(log) as f:
        last = ([line.strip() for line in f if line.strip()] or [""])[-1]
    return name, time.time() - t, last.removeprefix(f"{name}: ")


def main(argv=None):
    args = parse_args(argv)
    cfgs = configs_from_args(args)
    rank, world, _ = dist_info()
    jobs = sat_plumbing.check_jobs(args.jobs, 1 if world > 1 else sat_plumbing.cpu_count())
    if world > 1 and jobs > 1:
        raise sat_plumbing.UserError(f"--jobs {jobs}: under torchrun every process trains the same run; leave --jobs out")
    jobs = min(jobs, len(cfgs))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfgs[0].device != "cpu" else "gloo"
        dist.init_process_group(backend, store=restart_safe_store(rank), rank=rank, world_size=world)
    t0 = time.time()
    timings = []
    kw = dict(resume=args.resume, force=args.force, stop_after_epoch=args.stop_after_epoch)
    try:
        if jobs > 1:   # one process per run (sat_plumbing.in_processes); results identical to --jobs 1
            print(f"{len(cfgs)} runs, {jobs} at a time (one process and one torch thread each); "
                  f"each run's printout goes to its train.log")
            done = {}
            for i, (name, sec, last) in sat_plumbing.in_processes(train_logged, [(cfg, kw) for cfg in cfgs], jobs):
                done[i] = (name, sec)
                print(f"  [{len(done)}/{len(cfgs)}] {name}: {last}", flush=True)
            timings = [done[i] for i in sorted(done)]
        else:
            for cfg in cfgs:
                t = time.time()
                train(cfg, **kw, quiet=args.quiet)
                timings.append((run_name(cfg), time.time() - t))
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0 and len(cfgs) > 1:
        print(f"\n{len(cfgs)} runs in {time.time() - t0:.0f} s:")
        for name, sec in timings:
            print(f"  {name:<40} {sec:6.1f} s")


if __name__ == "__main__":
    sat_plumbing.run_cli(main)
