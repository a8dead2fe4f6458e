"""The harness of stage 03's training loop: a reader of the paper may skip all of it; nothing here is an algorithm.

`Run` is what 03's train() calls at a few named points (loader, restore, batches, after_step, end_epoch, save, finish):
the skip / resume / force decision, exact resume (mid-epoch checkpoints, random states, `EpochLoader`),
DistributedDataParallel set-up and restarts under torchrun, the divergence and catastrophic-overfitting checks,
checkpoint.pt / final.pt / log.csv. Many runs (03's main(), --jobs, the torchrun process group): sat_sweep.py.
"""
import csv
import dataclasses
import itertools
import math
import os
import time

import torch
import torch.distributed as dist

import sat_cli
import sat_data
import sat_files
import sat_processes
import sat_seeds
import sat_smoke

COLUMNS = ["epoch", "lr", "loss", "train_adv_acc", "check_clean_acc", "check_pgd10_acc", "seconds"]   # log.csv

# the settings that change what a run learns: a finished run is reused, an unfinished one resumed, only if all match
TRAINING_KEYS = ("dataset", "model", "width", "image_size", "act", "smooth_grad", "attack", "eps", "attack_steps",
                 "attack_step", "rand_start_prob", "epochs", "steps_per_epoch", "batch_size", "lr_per_256", "momentum", "weight_decay",
                 "warmup_epochs", "milestones", "label_smoothing", "seed", "val_size")
OLD_DEFAULTS = {"val_size": 0}   # a run saved before a setting existed had that setting's old behaviour


class TrainingDiverged(Exception):
    pass


# ----------------------------------------------------------------------------------------------------
# One run: Run is what train() calls; each part of its state is an object of its own, whole from its start

class Run:
    """The bookkeeping of one training run around the loop of 03's train(), at the points train() calls, in order:
      Run(...)             this process's rank and device; the skip / resume / fresh decision (run.finished), made
                           before anything is written; a resumed run's settings and record (run.history)
      loader(ds), restore  an EpochLoader; checkpoint.pt's state into the model, optimizer, ...; DDP, torch.compile
      batches(loader, e)   epoch e's (step, (x, y)), from where a mid-epoch checkpoint left off, with a progress bar
      after_step, end_epoch   the epoch's Totals, divergence check, mid-epoch checkpoint; its row, History's checks
      save(), finish()     checkpoint.pt and log.csv (True: --stop-after-epoch stops here); final.pt
    Set after __init__: only what train() hands over, restore's objects (Trained) and each epoch's Totals."""

    def __init__(self, cfg, name, run_dir, resume=False, force=False, stop_after_epoch=None, quiet=False):
        cfg = type(cfg)(**sat_smoke.smoke_settings("train", dataclasses.asdict(cfg)))   # SAT_SMOKE=1: seconds of work
        self.rank, self.world, self.device = place(cfg)
        self.name, self.run_dir, self.stop_after_epoch, self.quiet = name, run_dir, stop_after_epoch, quiet
        self.ckpt_path, self.final_path = os.path.join(run_dir, "checkpoint.pt"), os.path.join(run_dir, "final.pt")
        self.best_path = os.path.join(run_dir, "best.pt")   # with a validation split: the best epoch (Rice et al.)
        self.say = print if self.rank == 0 else (lambda *a, **k: None)
        if self.rank == 0:
            sat_cli.check_out_dir(run_dir)
        self.cfg, self.state, self.finished = decide(cfg, self, resume, force)
        self.history = History(self.state, self.cfg)
        self.start_epoch = self.history.start_epoch
        self.ckpt = self.state   # the last checkpoint: a resumed run that had finished its last epoch writes it as final.pt
        self.trained = None      # (bare model, optimizer, scheduler, scaler): restore()
        self.totals = None       # the running epoch's Totals: batches()
        if self.rank == 0 and not self.finished:
            tidy(run_dir, self.best_path, fresh=self.state is None)

    def loader(self, train_ds):
        """This process's share of each batch, shuffled by (seed, epoch): an EpochLoader."""
        return EpochLoader(self.cfg, train_ds, self.rank, self.world, self.device)

    def restore(self, model, optimizer, scheduler, scaler):
        """Load checkpoint.pt's state when resuming; wrap the model for DDP (torchrun) and torch.compile.
        Returns (the model to train, the model the attacker queries: the bare one, so that it syncs nothing)."""
        self.trained = Trained(model, optimizer, scheduler, scaler)
        if self.state is not None:
            load_state(self.state, self.trained)
            partial = self.history.partial
            self.say(f"{self.name}: resumed from {self.ckpt_path} after epoch {self.start_epoch}"
                     + (f" and {partial['step']} steps of epoch {self.start_epoch + 1}" if partial else ""))
        if self.world > 1:
            model = distributed(model, self.device, self.state, self.rank)
        compiled = self.cfg.compile
        return (torch.compile(model) if compiled else model), (torch.compile(self.trained.model) if compiled else self.trained.model)

    def batches(self, loader, epoch):
        """enumerate(batches of `epoch`), starting after the steps a mid-epoch checkpoint had trained (Totals)."""
        partial, self.history.partial = self.history.partial, None   # a mid-epoch checkpoint's steps: this epoch only
        self.totals = Totals(self, loader, epoch, partial)
        return self.totals.batches

    def after_step(self, i, loss, logits, y):
        """Step i of the epoch is done: the running totals, the divergence check, a mid-epoch checkpoint (Totals)."""
        self.totals.after_step(i, loss, logits, y)

    def end_epoch(self, lr, check_clean, check_pgd10):
        """The epoch's row (COLUMNS) and a warning ('' or why catastrophic overfitting is suspected, or best.pt)."""
        row = self.totals.row(lr, check_clean, check_pgd10)
        return row, self.history.add(row)

    def save(self):
        """checkpoint.pt and log.csv after the epoch; True when --stop-after-epoch asks to stop here."""
        done, stop = self.totals.epoch + 1, self.stop_after_epoch
        self.ckpt = checkpoint_state(self, done)
        if self.rank == 0:
            write_epoch(self, self.ckpt)   # best.pt (the best epoch so far), checkpoint.pt, log.csv
        if stop is not None and done >= stop and done < self.cfg.epochs:
            self.say(f"{self.name}: stopping after epoch {done} as asked (--stop-after-epoch); --resume continues")
            return True
        return False

    def finish(self):
        """final.pt (checkpoint.pt's dict, marked finished); returns its path."""
        if self.rank == 0:
            sat_files.save_checkpoint({**self.ckpt, "finished": True}, self.final_path)
            self.say(f"{self.name}: trained in {self.history.seconds():.1f} s (the sum of its epochs) -> {self.final_path}"
                     + self.history.summary())
        if self.world > 1:
            assert_ranks_agree(self.trained.model, self.world, self.device)
            self.say(f"{self.name}: all {self.world} ranks hold identical weights")
        return self.final_path


def place(cfg):
    """(rank, world size, device) of this process: under torchrun on CUDA, its own GPU (LOCAL_RANK)."""
    rank, world, local_rank = sat_processes.world()
    if cfg.batch_size % world:
        raise sat_cli.UserError(f"--batch-size {cfg.batch_size} (global) must divide by the {world} processes")
    device = sat_processes.pick_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return rank, world, device


def other_settings(cfg, saved: dict, path, what, force_does):
    """One UserError line if the checkpoint config `saved` differs from `cfg` in a training setting (TRAINING_KEYS)."""
    diff = [f"{k} {saved.get(k, OLD_DEFAULTS.get(k))!r} -> {getattr(cfg, k)!r}" for k in TRAINING_KEYS
            if saved.get(k, OLD_DEFAULTS.get(k)) != getattr(cfg, k)]
    if diff:
        raise sat_cli.UserError(f"{path!r} {what} with other settings ({', '.join(diff)}); --force {force_does}, "
                                f"or choose another --out")


def decide(cfg, run, resume, force):
    """(cfg, checkpoint.pt's state or None, finished): a fresh start, a resume or a skip, decided BEFORE anything is
    written. A finished run is reused, and a checkpoint resumed, only with the same training settings."""
    if os.path.isfile(run.final_path) and not force:
        other_settings(cfg, sat_files.load_checkpoint(run.final_path)["config"], run.final_path, "was trained", "retrains")
        run.say(f"{run.name}: finished already ({run.final_path}); --force retrains it")
        return cfg, None, True
    state = None
    if resume and os.path.isfile(run.ckpt_path):
        state = sat_files.load_checkpoint(run.ckpt_path)   # corrupt / foreign: one line, exit 2, the file kept
        if state.get("kind") != "train":
            raise sat_cli.UserError(f"{run.ckpt_path!r} is not a training checkpoint of stage 03")
        # resumed only with the settings it was started with (`make run` passes --resume: another run's half-trained
        # checkpoint in a preset's folder must not become make run's run)
        other_settings(cfg, state["config"], run.ckpt_path, "holds a run started", "starts it over")
        cfg = type(cfg)(**state["config"])                  # its own settings (those TRAINING_KEYS leave out too)
    elif resume:
        run.say(f"{run.name}: no checkpoint at {run.ckpt_path} yet, starting from scratch")
    elif os.path.isfile(run.ckpt_path) and not force:
        raise sat_cli.UserError(f"{run.ckpt_path!r} holds an unfinished run; pass --resume to continue it or --force to start over")
    return cfg, state, False


def checkpoint_state(run, epochs_done, partial=None):
    """checkpoint.pt's dict: everything `run` needs to continue after `epochs_done` epochs, plus `partial` steps of the
    next one. Called by every process (the BN statistics of all are gathered); rank 0 writes the result."""
    t, history = run.trained, run.history
    return {"kind": "train", "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict() if t.scaler else {},
            "epoch": epochs_done, "partial": partial, "config": dataclasses.asdict(run.cfg),
            "rng": sat_seeds.rng_state(), "rank_buffers": gather_buffers(t.model, run.world),
            "metrics": {"history": history.rows, "catastrophic_overfitting_epoch": history.co_epoch}}


def write_epoch(run, ckpt):
    """Rank 0's files after an epoch: best.pt if it is the best epoch so far, checkpoint.pt, log.csv."""
    if run.history.is_best:   # before checkpoint.pt: a crash in between redoes this epoch, and writes it again
        sat_files.save_checkpoint({**ckpt, "finished": True, "selected": "best"}, run.best_path)
    sat_files.save_checkpoint(ckpt, run.ckpt_path)
    write_csv(os.path.join(run.run_dir, "log.csv"), run.history.rows)


def tidy(run_dir, best_path, fresh):
    """Before a run starts or resumes: the temporary file of a write a kill interrupted goes, and on a fresh start an
    earlier run's best.pt (this one chooses its own best epoch)."""
    sat_files.remove_stale_temporaries(run_dir)
    if fresh and os.path.isfile(best_path):
        os.remove(best_path)


class Trained:
    """What train() hands to Run.restore: the bare model (never the DDP or compiled wrapper), its optimizer,
    scheduler and fp16 scaler (or None): what a checkpoint holds."""

    def __init__(self, model, optimizer, scheduler, scaler):
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler


def load_state(state, trained):
    """checkpoint.pt's state into the training objects, and the random states of the moment it was written."""
    trained.model.load_state_dict(state["model"])
    trained.optimizer.load_state_dict(state["optimizer"])
    trained.scheduler.load_state_dict(state["scheduler"])
    if trained.scaler is not None and state.get("scaler"):
        trained.scaler.load_state_dict(state["scaler"])
    sat_seeds.set_rng_state(state["rng"])


def distributed(model, device, state, rank):
    """The model in DistributedDataParallel; after a resume, this process's own buffers (BatchNorm statistics) back,
    which DDP overwrote with rank 0's."""
    bare = model
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if state is not None and state.get("rank_buffers"):   # after DDP, which copies rank 0's buffers to all
        with torch.no_grad():
            for buf, saved in zip(bare.buffers(), state["rank_buffers"][rank]):
                buf.copy_(saved)
    return model


class History:
    """The epochs trained so far (log.csv's rows; a resumed run's, from its checkpoint) and what is read off them:
    the best check PGD-10 so far, the epoch catastrophic overfitting was first flagged, whether the last epoch is
    the best (best.pt), and a mid-epoch checkpoint's steps of the next epoch (`partial`, until batches() takes it)."""

    def __init__(self, state, cfg):
        self.attack, self.val_size = cfg.attack, cfg.val_size
        self.rows = list(state["metrics"]["history"]) if state else []
        self.start_epoch = state["epoch"] if state else 0
        self.partial = state.get("partial") if state else None   # set when written in the middle of an epoch
        self.co_epoch = state["metrics"].get("catastrophic_overfitting_epoch") if state else None
        self.best_pgd10 = max([-1.0] + [r["check_pgd10_acc"] for r in self.rows])
        self.is_best = False

    def add(self, row):
        """The epoch's row; returns a warning ('' or what the checks found)."""
        rows = self.rows
        rows.append(row)
        # Catastrophic overfitting (Wong et al. 2020): the multi-step (PGD-10) accuracy collapses while the
        # single-step training accuracy keeps rising: the model has learned to mask the one-step attack.
        warning = ""
        if (self.attack != "none" and row["check_pgd10_acc"] < self.best_pgd10 - 0.2 and len(rows) > 1
                and row["train_adv_acc"] > rows[-2]["train_adv_acc"]):
            self.co_epoch = self.co_epoch or row["epoch"]
            warning = "  <- catastrophic overfitting? PGD-10 collapsed while train accuracy rose"
        # Early stopping (Rice et al. 2020): with a validation split, the epoch of the best PGD-10 accuracy on it
        # (the first, on a tie) is kept as best.pt; the test images never enter the choice.
        self.is_best = self.val_size > 0 and row["check_pgd10_acc"] > self.best_pgd10
        if self.is_best:
            warning += "  <- best so far (best.pt)"
        self.best_pgd10 = max(self.best_pgd10, row["check_pgd10_acc"])
        return warning

    def seconds(self):
        return sum(r["seconds"] for r in self.rows)

    def summary(self):
        """The end of the run's last line: its best epoch (with a validation split), a collapse if one was flagged."""
        best = max(self.rows, key=lambda r: r["check_pgd10_acc"]) if self.val_size else None
        return ((f"; best.pt: epoch {best['epoch']}, validation PGD-10 {100 * best['check_pgd10_acc']:.1f}%" if best else "")
                + (f"  (catastrophic overfitting flagged at epoch {self.co_epoch})" if self.co_epoch else ""))


class Totals:
    """One epoch of `run`: its batches (from the step a mid-epoch checkpoint, `partial`, had reached, with a progress
    bar), its running loss and accuracy, kept on the device (adding them reads no tensor: no GPU sync), a restarted
    epoch's starting from the checkpoint's, and its mid-epoch checkpoints."""

    def __init__(self, run, loader, epoch, partial):
        from tqdm import tqdm
        self.run, self.epoch, self.steps = run, epoch, loader.steps_per_epoch
        done = partial["step"] if partial else 0      # steps of this epoch trained before a restart
        batches = loader.epoch(epoch, done)  # one draw from the global RNG, as the uninterrupted run made ...
        if partial:                          # ... which had then trained `done` steps: continue from the RNG as it was then
            sat_seeds.set_rng_state(run.state["rng"])
        self.bar = tqdm(batches, desc=f"epoch {epoch + 1}/{run.cfg.epochs}", leave=False,
                        disable=run.quiet or run.rank != 0, initial=done, total=self.steps)
        self.batches = enumerate(self.bar, start=done)
        self.loss_sum = torch.tensor(partial["loss_sum"] if partial else 0.0, device=run.device)
        self.correct = torch.tensor(partial["correct"] if partial else 0.0, device=run.device)
        self.seen = partial["seen"] if partial else 0
        self.t0 = time.time() - (partial["seconds"] if partial else 0.0)

    def after_step(self, i, loss, logits, y):
        """Step i's loss and accuracy; every 20 steps (one host sync) the divergence check and the bar's loss; every
        cfg.checkpoint_every steps a mid-epoch checkpoint."""
        run = self.run
        self.loss_sum += loss * len(y)
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += len(y)
        if i % 20 == 0 or i == self.steps - 1:   # one host sync every 20 steps, not every step
            mean_loss = self.loss_sum.item() / self.seen
            if not math.isfinite(mean_loss):
                raise TrainingDiverged(f"{run.name}: loss became {mean_loss} in epoch {self.epoch + 1}; stopped. "
                                       f"The last good checkpoint (if any) is kept at {run.ckpt_path}. Lower --lr-per-256?")
            self.bar.set_postfix(loss=f"{mean_loss:.3f}")
        every = run.cfg.checkpoint_every
        if every and (i + 1) % every == 0 and i + 1 < self.steps:
            mid = checkpoint_state(run, self.epoch, {"step": i + 1, "loss_sum": self.loss_sum.item(), "correct": self.correct.item(),
                                              "seen": self.seen, "seconds": time.time() - self.t0})
            if run.rank == 0:
                sat_files.save_checkpoint(mid, run.ckpt_path)

    def row(self, lr, check_clean, check_pgd10):
        """The epoch's row of log.csv (COLUMNS)."""
        return dict(epoch=self.epoch + 1, lr=lr, loss=self.loss_sum.item() / self.seen,
                    train_adv_acc=self.correct.item() / self.seen, check_clean_acc=check_clean,
                    check_pgd10_acc=check_pgd10, seconds=time.time() - self.t0)


class EpochLoader:
    """The training DataLoader over an EpochSampler, this process's share of each batch (batch_size / world images a
    step); epoch(e, first_step) is epoch e's batches from step `first_step` on, the same after a resume as without."""

    def __init__(self, cfg, train_ds, rank, world, device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        # DistributedSampler also for one process: its shuffle depends only on (seed, epoch), so a resumed run sees the
        # same batches as an uninterrupted one; each image's augmentation depends only on (seed, epoch, image)
        # (sat_data.SeededAugmentation), so neither a restart nor a loader worker nor their number changes a crop. The
        # loader's own generator seeds its workers: a persistent loader draws their seed once per process, from the
        # global random state if it has no generator, which shifted the PGD random starts of a resumed process.
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
            raise sat_cli.UserError(f"training set of {len(train_ds)} images is smaller than one batch of {self.per_batch}")

    def epoch(self, epoch, first_step=0):
        """An iterator over epoch `epoch`'s batches from step `first_step` on."""
        self.sampler.set_epoch(epoch)
        self.sampler.first, self.sampler.last = first_step * self.per_batch, self.steps_per_epoch * self.per_batch
        batches = iter(self._loader)
        # The one draw from the global random state that iter() made here when the loader had no generator of its
        # own: kept, so that the runs recorded with --workers 0 (digits, Fashion-MNIST) stay bit-identical.
        torch.empty((), dtype=torch.int64).random_()
        return batches


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
    """log.csv, written atomically (sat_files.atomic_write): a kill never leaves half a file."""
    with sat_files.atomic_write(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(history)


# ----------------------------------------------------------------------------------------------------
# Several processes (torchrun)

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
