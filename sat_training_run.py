"""The harness of stage 03's training loop: a reader of the paper may skip all of it; nothing here is an algorithm.

`Run` is what 03's train() calls at a few named points (restore, batches, after_step, end_epoch, save, finish):
the skip / resume / force decision, exact resume (mid-epoch checkpoints, random states, `EpochSampler`),
DistributedDataParallel set-up and restarts under torchrun, the divergence and catastrophic-overfitting checks,
checkpoint.pt / final.pt / log.csv. `sweep` is 03's main(): the runs a command line asks for, one after the
other or `--jobs` at a time, each in a process of its own.
"""
import csv
import dataclasses
import itertools
import math
import os
import sys
import time
from contextlib import redirect_stdout

import torch
import torch.distributed as dist

import sat_data
import sat_models
import sat_plumbing

COLUMNS = ["epoch", "lr", "loss", "train_adv_acc", "check_clean_acc", "check_pgd10_acc", "seconds"]   # log.csv

# the settings that change what a run learns: a finished run is reused only if all of them match
TRAINING_KEYS = ("dataset", "model", "width", "image_size", "act", "smooth_grad", "attack", "eps", "attack_steps",
                 "attack_step", "rand_start_prob", "epochs", "steps_per_epoch", "batch_size", "lr_per_256", "momentum", "weight_decay",
                 "warmup_epochs", "milestones", "label_smoothing", "seed", "val_size")
OLD_DEFAULTS = {"val_size": 0}   # a run saved before a setting existed had that setting's old behaviour


class TrainingDiverged(Exception):
    pass


# ----------------------------------------------------------------------------------------------------
# One run

class Run:
    """The bookkeeping of one training run around the loop of 03's train(), in the order train() calls it:
      Run(...)         decides between a fresh start, a resume and a skip (run.finished) before anything is written
      loader(ds)       the DataLoader over an EpochSampler: the same batches after a resume as without one
      restore(...)     the state of checkpoint.pt (resume), then DDP and torch.compile; returns the models to use
      batches(epoch)   the epoch's (step, (x, y)), from where a mid-epoch checkpoint left off, with a progress bar
      after_step(...)  running loss and accuracy, the divergence check (one host sync every 20 steps), and
                       checkpoint.pt every cfg.checkpoint_every steps
      end_epoch(...)   the epoch's row of the table, and the catastrophic-overfitting check
      save()           checkpoint.pt and log.csv; True if --stop-after-epoch says to stop here
      finish()         final.pt; under torchrun, a check that every process ends with the same weights
    """

    def __init__(self, cfg, name, run_dir, resume=False, force=False, stop_after_epoch=None, quiet=False):
        self.rank, self.world, local_rank = dist_info()
        if cfg.batch_size % self.world:
            raise sat_plumbing.UserError(f"--batch-size {cfg.batch_size} (global) must divide by the {self.world} processes")
        self.device = sat_plumbing.pick_device(cfg.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        self.name, self.run_dir, self.stop_after_epoch, self.quiet = name, run_dir, stop_after_epoch, quiet
        self.ckpt_path, self.final_path = os.path.join(run_dir, "checkpoint.pt"), os.path.join(run_dir, "final.pt")
        self.best_path = os.path.join(run_dir, "best.pt")   # with a validation split: the best epoch (Rice et al.)
        self.say = print if self.rank == 0 else (lambda *a, **k: None)
        if self.rank == 0:
            sat_plumbing.check_out_dir(run_dir)

        # Decide between a fresh start, a resume and a skip BEFORE anything is written.
        self.state, self.finished = None, False
        if os.path.isfile(self.final_path) and not force:
            done = sat_plumbing.load_checkpoint(self.final_path)["config"]
            diff = [f"{k} {done.get(k, OLD_DEFAULTS.get(k))!r} -> {getattr(cfg, k)!r}" for k in TRAINING_KEYS
                    if done.get(k, OLD_DEFAULTS.get(k)) != getattr(cfg, k)]
            if diff:
                raise sat_plumbing.UserError(f"{self.final_path!r} was trained with other settings ({', '.join(diff)}); --force retrains it, or choose another --out")
            self.say(f"{name}: finished already ({self.final_path}); --force retrains it")
            self.finished = True
            return
        if resume and os.path.isfile(self.ckpt_path):
            self.state = sat_plumbing.load_checkpoint(self.ckpt_path)   # corrupt / foreign: one line, exit 2, the file kept
            if self.state.get("kind") != "train":
                raise sat_plumbing.UserError(f"{self.ckpt_path!r} is not a training checkpoint of stage 03")
            cfg = type(cfg)(**self.state["config"])                    # a resumed run keeps its own settings
        elif resume:
            self.say(f"{name}: no checkpoint at {self.ckpt_path} yet, starting from scratch")
        elif os.path.isfile(self.ckpt_path) and not force:
            raise sat_plumbing.UserError(f"{self.ckpt_path!r} holds an unfinished run; pass --resume to continue it or --force to start over")
        self.cfg = cfg
        if self.rank == 0:
            sat_plumbing.remove_stale_temporaries(run_dir)   # left by a process killed while writing a checkpoint
            if self.state is None and os.path.isfile(self.best_path):
                os.remove(self.best_path)                     # an earlier run's best epoch: this one starts over

    def loader(self, train_ds):
        """DistributedSampler also for one process: its shuffle depends only on (seed, epoch), so a resumed
        run sees the same batches as an uninterrupted one; each image's augmentation depends only on (seed, epoch,
        image) (sat_data.SeededAugmentation), so neither a restart nor a loader worker nor their number changes a
        crop. The loader's own generator seeds its workers: a persistent loader draws their seed once per process,
        from the global random state if it has no generator, which shifted the PGD random starts of a resumed
        process. Each process loads batch_size / world images a step."""
        cfg = self.cfg
        train_ds = sat_data.SeededAugmentation(train_ds, cfg.seed)
        self.sampler = EpochSampler(train_ds, num_replicas=self.world, rank=self.rank, shuffle=True, seed=cfg.seed, drop_last=True)
        self.per_batch = cfg.batch_size // self.world
        self._loader = torch.utils.data.DataLoader(train_ds, batch_size=self.per_batch, sampler=self.sampler,
                                                   num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                                                   drop_last=True, persistent_workers=cfg.workers > 0,
                                                   generator=torch.Generator().manual_seed(cfg.seed))
        self.steps_per_epoch = min(len(self._loader), cfg.steps_per_epoch or len(self._loader))
        if self.steps_per_epoch == 0:
            raise sat_plumbing.UserError(f"training set of {len(train_ds)} images is smaller than one batch of {self.per_batch}")
        return self._loader

    def restore(self, model, optimizer, scheduler, scaler):
        """Load checkpoint.pt's state when resuming; wrap the model for DDP (torchrun) and torch.compile.
        Returns (the model to train, the model the attacker queries: the bare one, so that it syncs nothing)."""
        self.bare, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.start_epoch, self.history, self.partial = 0, [], None
        state = self.state
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            self.start_epoch, self.history = state["epoch"], list(state["metrics"]["history"])
            self.partial = state.get("partial")   # set when written in the middle of an epoch
            sat_plumbing.set_rng_state(state["rng"])
            self.say(f"{self.name}: resumed from {self.ckpt_path} after epoch {self.start_epoch}"
                     + (f" and {self.partial['step']} steps of epoch {self.start_epoch + 1}" if self.partial else ""))
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if state is not None and state.get("rank_buffers"):   # after DDP, which copies rank 0's buffers to all
                with torch.no_grad():
                    for buf, saved in zip(self.bare.buffers(), state["rank_buffers"][self.rank]):
                        buf.copy_(saved)
        self.best_pgd10, self.co_epoch, self.is_best = -1.0, None, False
        self.ckpt = state   # a resumed run that had finished its last epoch goes straight to writing final.pt
        for row in self.history:
            self.best_pgd10 = max(self.best_pgd10, row["check_pgd10_acc"])
        if state is not None:
            self.co_epoch = state["metrics"].get("catastrophic_overfitting_epoch")
        compiled = self.cfg.compile
        return (torch.compile(model) if compiled else model), (torch.compile(self.bare) if compiled else self.bare)

    def checkpoint(self, epochs_done, partial=None):
        """Everything needed to continue: after `epochs_done` epochs, plus `partial` steps of the next one.
        Called by every process (the BN statistics of all are gathered); rank 0 writes the result."""
        return {"kind": "train", "model": self.bare.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else {},
                "epoch": epochs_done, "partial": partial, "config": dataclasses.asdict(self.cfg),
                "rng": sat_plumbing.rng_state(), "rank_buffers": gather_buffers(self.bare, self.world),
                "metrics": {"history": self.history, "catastrophic_overfitting_epoch": self.co_epoch}}

    def batches(self, epoch):
        """enumerate(batches of `epoch`), starting after the steps a mid-epoch checkpoint had trained."""
        from tqdm import tqdm
        partial, device = self.partial, self.device
        self.epoch = epoch
        self.sampler.set_epoch(epoch)
        done = partial["step"] if partial else 0      # steps of this epoch trained before a restart
        self.sampler.first, self.sampler.last = done * self.per_batch, self.steps_per_epoch * self.per_batch
        self.loss_sum = torch.tensor(partial["loss_sum"] if partial else 0.0, device=device)
        self.correct = torch.tensor(partial["correct"] if partial else 0.0, device=device)
        self.seen = partial["seen"] if partial else 0
        self.t0 = time.time() - (partial["seconds"] if partial else 0.0)
        batches = iter(self._loader)
        # The one draw from the global random state that iter() made here when the loader had no generator of its
        # own: kept, so that the runs recorded with --workers 0 (digits, Fashion-MNIST) stay bit-identical.
        torch.empty((), dtype=torch.int64).random_()
        if partial:   # the uninterrupted run had then trained `done` steps: continue from the RNG as it was then
            sat_plumbing.set_rng_state(self.state["rng"])
        self.partial = None
        self.bar = tqdm(batches, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False,
                        disable=self.quiet or self.rank != 0, initial=done, total=self.steps_per_epoch)
        return enumerate(self.bar, start=done)

    def after_step(self, i, loss, logits, y):
        """Step i of the epoch is done: add it to the running loss and accuracy (on the device: no sync), check
        them every 20 steps, and write a mid-epoch checkpoint every cfg.checkpoint_every steps."""
        self.loss_sum += loss * len(y)
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += len(y)
        if i % 20 == 0 or i == self.steps_per_epoch - 1:   # one host sync every 20 steps, not every step
            mean_loss = self.loss_sum.item() / self.seen
            if not math.isfinite(mean_loss):
                raise TrainingDiverged(f"{self.name}: loss became {mean_loss} in epoch {self.epoch + 1}; stopped. "
                                       f"The last good checkpoint (if any) is kept at {self.ckpt_path}. Lower --lr-per-256?")
            self.bar.set_postfix(loss=f"{mean_loss:.3f}")
        every = self.cfg.checkpoint_every
        if every and (i + 1) % every == 0 and i + 1 < self.steps_per_epoch:
            mid = self.checkpoint(self.epoch, {"step": i + 1, "loss_sum": self.loss_sum.item(), "correct": self.correct.item(),
                                               "seen": self.seen, "seconds": time.time() - self.t0})
            if self.rank == 0:
                sat_plumbing.save_checkpoint(mid, self.ckpt_path)

    def end_epoch(self, lr, check_clean, check_pgd10):
        """The epoch's row (COLUMNS) and a warning ('' or why catastrophic overfitting is suspected)."""
        row = dict(epoch=self.epoch + 1, lr=lr, loss=self.loss_sum.item() / self.seen,
                   train_adv_acc=self.correct.item() / self.seen, check_clean_acc=check_clean,
                   check_pgd10_acc=check_pgd10, seconds=time.time() - self.t0)
        history = self.history
        history.append(row)
        # Catastrophic overfitting (Wong et al. 2020): the multi-step (PGD-10) accuracy collapses while the
        # single-step training accuracy keeps rising: the model has learned to mask the one-step attack.
        warning = ""
        if (self.cfg.attack != "none" and check_pgd10 < self.best_pgd10 - 0.2 and len(history) > 1
                and row["train_adv_acc"] > history[-2]["train_adv_acc"]):
            self.co_epoch = self.co_epoch or self.epoch + 1
            warning = "  <- catastrophic overfitting? PGD-10 collapsed while train accuracy rose"
        # Early stopping (Rice et al. 2020): with a validation split, the epoch of the best PGD-10 accuracy on it
        # (the first, on a tie) is kept as best.pt; the test images never enter the choice.
        self.is_best = self.cfg.val_size > 0 and check_pgd10 > self.best_pgd10
        if self.is_best:
            warning += "  <- best so far (best.pt)"
        self.best_pgd10 = max(self.best_pgd10, check_pgd10)
        return row, warning

    def save(self):
        """checkpoint.pt and log.csv after the epoch; True when --stop-after-epoch asks to stop here."""
        self.ckpt = self.checkpoint(self.epoch + 1)
        if self.rank == 0:
            if self.is_best:   # before checkpoint.pt: a crash in between redoes this epoch, and writes it again
                sat_plumbing.save_checkpoint({**self.ckpt, "finished": True, "selected": "best"}, self.best_path)
            sat_plumbing.save_checkpoint(self.ckpt, self.ckpt_path)
            write_csv(os.path.join(self.run_dir, "log.csv"), self.history)
        done, stop = self.epoch + 1, self.stop_after_epoch
        if stop is not None and done >= stop and done < self.cfg.epochs:
            self.say(f"{self.name}: stopping after epoch {done} as asked (--stop-after-epoch); --resume continues")
            return True
        return False

    def finish(self):
        """final.pt (checkpoint.pt's dict, marked finished); returns its path."""
        if self.rank == 0:
            sat_plumbing.save_checkpoint({**self.ckpt, "finished": True}, self.final_path)
            total = sum(r["seconds"] for r in self.history)
            best = max(self.history, key=lambda r: r["check_pgd10_acc"]) if self.cfg.val_size else None
            self.say(f"{self.name}: trained in {total:.1f} s (the sum of its epochs) -> {self.final_path}"
                     + (f"; best.pt: epoch {best['epoch']}, validation PGD-10 {100 * best['check_pgd10_acc']:.1f}%" if best else "")
                     + (f"  (catastrophic overfitting flagged at epoch {self.co_epoch})" if self.co_epoch else ""))
        if self.world > 1:
            assert_ranks_agree(self.bare, self.world, self.device)
            self.say(f"{self.name}: all {self.world} ranks hold identical weights")
        return self.final_path


class EpochSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (its shuffle depends only on the seed and the epoch, so a resumed run sees the
    same batches as an uninterrupted one) that serves samples [first, last) of this process's epoch: a run
    resumed in the middle of an epoch starts after the batches it has already trained on, without loading
    them, and --steps-per-epoch stops an epoch early. Each sample as an (epoch, index) key: the loader's
    workers keep their own copy of the data set, so the epoch travels with the index (SeededAugmentation)."""
    first, last = 0, None

    def __iter__(self):
        return ((self.epoch, i) for i in itertools.islice(super().__iter__(), self.first, self.last))

    def __len__(self):
        return len(range(super().__len__())[self.first:self.last])


def write_csv(path, history):
    """log.csv, written to a temporary file and renamed over the old one: a kill never leaves half a file."""
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(history)
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------------------
# Several processes (torchrun)

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


# ----------------------------------------------------------------------------------------------------
# The sweep: 03's command line (default: everything the paper compares, on digits, seed 0)

def add_sweep_flags(parser):
    """The flags of a sweep that are not settings of one run (those come from Config: add_settings)."""
    p = parser
    p.add_argument("--seeds", type=int, default=1, help="train seeds 0..N-1 of every configuration; default: 1")
    p.add_argument("--out", default=None, help="runs folder; default: runs/03_adv_train")
    p.add_argument("--resume", action="store_true", help="continue each run from its checkpoint.pt; start it if there is none")
    p.add_argument("--force", action="store_true", help="retrain runs that exist already")
    p.add_argument("--stop-after-epoch", type=int, default=None, help="stop after this epoch (then --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--jobs", type=int, default=None, help="runs trained at once, one process and one torch thread each "
                   "(default: one per core; 1 under torchrun); each run's output then goes to its train.log")
    return parser


def configs_from_args(stage, args) -> list:
    """The list of stage 03's Configs the command line asks for: stage.SWEEP, narrowed by --act / --smooth-grad,
    for each --model and seed."""
    Config = stage.Config
    given = {k: v for k, v in vars(args).items() if v is not None and k in Config.__dataclass_fields__}
    # names and ranges are checked here, before the sweep is narrowed: an unknown name would silently select nothing
    sat_plumbing.check_settings(Config, given)
    smooth_modes = [m for m in args.smooth_grad or [] if m != "none"]   # 'none' suits every activation
    if smooth_modes and args.act and "relu" not in args.act:
        raise sat_plumbing.UserError(f"--smooth-grad {' '.join(smooth_modes)} applies to --act relu only, not {' '.join(args.act)}")
    sat_plumbing.check_number("--seeds", args.seeds, 1, 100_000)
    if args.stop_after_epoch is not None:
        sat_plumbing.check_number("--stop-after-epoch", args.stop_after_epoch, 1, Config.__dataclass_fields__["epochs"].metadata["range"][1])
    sweep = [(a, m) for a, m in stage.SWEEP if (args.act is None or a in args.act)
             and (args.smooth_grad is None or m in args.smooth_grad)]
    if args.attack == "none":       # standard training: the smooth-backward rows do not apply
        sweep = [(a, m) for a, m in sweep if m == "none"]
    if not sweep:
        raise sat_plumbing.UserError("--attack none (standard training) leaves no run to do with --smooth-grad other than none")
    sweep = sat_plumbing.smoke_settings("train", {"sweep": sweep})["sweep"]   # SAT_SMOKE=1: three show a sweep works
    overrides = {k: v for k, v in given.items() if k not in ("act", "smooth_grad", "dataset", "out", "seed", "model")}
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    seeds = sat_plumbing.smoke_settings("train", {"seeds": seeds})["seeds"]   # SAT_SMOKE=1: two show a sweep works
    models = args.model or [stage.PRESETS[args.dataset]["model"]]
    models = sat_plumbing.smoke_settings("train", {"models": models})["models"]   # SAT_SMOKE=1: two show a sweep works
    out_root = sat_plumbing.check_out_dir(args.out) if args.out else stage.OUT_DIR
    cfgs = []
    for model in models:
        size = {}
        if args.dataset == "imagenet" and args.image_size is None:   # each model at its usual resolution
            size = {"image_size": sat_models.usual_image_size(sat_models.check_model_name(model, args.dataset))}
        for seed in seeds:
            for a, m in sweep:
                cfg = stage.preset_config(args.dataset, model=model, act=a, smooth_grad=m, seed=seed, **size, **overrides)
                cfg.out = os.path.join(out_root, stage.run_name(cfg))
                cfgs.append(cfg)
    return cfgs


def train_logged(job):
    """One run of a --jobs sweep, in a worker process: train(cfg, **kw) with its printout in <run>/train.log.
    Returns (run name, wall-clock seconds, the log's last line)."""
    train, name, cfg, kw = job
    t = time.time()
    log = os.path.join(sat_plumbing.check_out_dir(cfg.out), "train.log")
    with open(log, "a") as f, redirect_stdout(f):
        train(cfg, **kw, quiet=True)
    with open(log) as f:
        last = ([line.strip() for line in f if line.strip()] or [""])[-1]
    return name, time.time() - t, last.removeprefix(f"{name}: ")


def sweep(stage, args):
    """Stage 03's main(): train every Config of configs_from_args, one after the other, or --jobs at a time
    in processes of their own (the same weights either way), or as one torchrun job."""
    cfgs = configs_from_args(stage, args)
    rank, world, _ = dist_info()
    jobs = sat_plumbing.check_jobs(args.jobs, 1 if world > 1 else sat_plumbing.cpu_count())
    if world > 1 and jobs > 1:
        raise sat_plumbing.UserError(f"--jobs {jobs}: under torchrun every process trains the same run; leave --jobs out")
    jobs = min(jobs, len(cfgs))
    jobs = sat_plumbing.smoke_settings("train", {"jobs": jobs})["jobs"]   # SAT_SMOKE=1: in this process
    for split in ("train", "test"):   # missing data: one error line now, not one per run after its folder is made
        sat_data.get_dataset(cfgs[0].dataset, split, cfgs[0].data, cfgs[0].image_size, cfgs[0].download)
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
            jobs_list = [(stage.train, stage.run_name(cfg), cfg, kw) for cfg in cfgs]
            for i, (name, sec, last) in sat_plumbing.in_processes(train_logged, jobs_list, jobs):
                done[i] = (name, sec)
                print(f"  [{len(done)}/{len(cfgs)}] {name}: {last}", flush=True)
            timings = [done[i] for i in sorted(done)]
        else:
            for cfg in cfgs:
                t = time.time()
                stage.train(cfg, **kw, quiet=args.quiet)
                timings.append((stage.run_name(cfg), time.time() - t))
        if world > 1:   # every process done before any tears the group down (gloo aborts a peer still talking)
            dist.barrier()
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0 and len(cfgs) > 1:
        print(f"\n{len(cfgs)} runs in {time.time() - t0:.0f} s; wall-clock time of each run, start-up "
              f"(data, model, process) and saving included:")
        for name, sec in timings:
            print(f"  {name:<40} {sec:6.1f} s")
    if world > 1:
        # A torchrun worker that has finished (weights saved and checked, process group destroyed) leaves now, without
        # running C++ static destructors: under load, gloo's threads made some workers abort at that point
        # ("terminate called without an active exception", exit -6), which torchrun reports as a failed job.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
