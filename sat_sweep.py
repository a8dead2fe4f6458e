"""The sweep, stage 03's main(): a reader of the paper may skip all of it; nothing here is an algorithm.

The runs a command line asks for (stage 03's SWEEP, narrowed by --act / --smooth-grad, for each --model and seed),
trained one after the other, or `--jobs` at a time each in a process of its own (the same weights either way), or
as one torchrun job whose process group meets in a store that survives `--max-restarts`. One run's harness (resume,
DDP, checks, files): sat_training_run.py.
"""
import os
import sys
import time
from contextlib import redirect_stdout

import torch
import torch.distributed as dist

import sat_cli
import sat_data
import sat_models
import sat_processes
import sat_smoke
from sat_training_run import TrainingDiverged


def restart_safe_store(rank):
    """The store the processes of a torchrun job meet in, under a prefix of their own for each restart.
    torch's default (env://) puts the workers that `torchrun --max-restarts N` starts after a crash where they
    read the dead workers' addresses (seen with torch 2.14 and gloo: 'Connection refused', the job fails)."""
    from datetime import timedelta
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise sat_cli.UserError("WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set: start several processes with torchrun")
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"   # torchrun hosts the store itself
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=rank == 0 and not agent_store,
                          timeout=timedelta(minutes=30))
    return dist.PrefixStore(f"sat/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)



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
    sat_cli.check_settings(Config, given)
    smooth_modes = [m for m in args.smooth_grad or [] if m != "none"]   # 'none' suits every activation
    if smooth_modes and args.act and "relu" not in args.act:
        raise sat_cli.UserError(f"--smooth-grad {' '.join(smooth_modes)} applies to --act relu only, not {' '.join(args.act)}")
    sat_cli.check_number("--seeds", args.seeds, 1, 100_000)
    if args.stop_after_epoch is not None:
        sat_cli.check_number("--stop-after-epoch", args.stop_after_epoch, 1, Config.__dataclass_fields__["epochs"].metadata["range"][1])
    sweep = [(a, m) for a, m in stage.SWEEP if (args.act is None or a in args.act)
             and (args.smooth_grad is None or m in args.smooth_grad)]
    if args.attack == "none":       # standard training: the smooth-backward rows do not apply
        sweep = [(a, m) for a, m in sweep if m == "none"]
    if not sweep:
        raise sat_cli.UserError("--attack none (standard training) leaves no run to do with --smooth-grad other than none")
    sweep = sat_smoke.smoke_settings("train", {"sweep": sweep})["sweep"]   # SAT_SMOKE=1: three show a sweep works
    overrides = {k: v for k, v in given.items() if k not in ("act", "smooth_grad", "dataset", "out", "seed", "model")}
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    seeds = sat_smoke.smoke_settings("train", {"seeds": seeds})["seeds"]   # SAT_SMOKE=1: two show a sweep works
    models = args.model or [stage.PRESETS[args.dataset]["model"]]
    models = sat_smoke.smoke_settings("train", {"models": models})["models"]   # SAT_SMOKE=1: two show a sweep works
    out_root = sat_cli.check_out_dir(args.out) if args.out else stage.OUT_DIR
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
    log = os.path.join(sat_cli.check_out_dir(cfg.out), "train.log")
    with open(log, "a") as f, redirect_stdout(f):
        train(cfg, **kw, quiet=True)
    with open(log) as f:
        last = ([line.strip() for line in f if line.strip()] or [""])[-1]
    return name, time.time() - t, last.removeprefix(f"{name}: ")


def sweep(stage, args):
    """Stage 03's main(): train every Config of configs_from_args, one after the other, or --jobs at a time
    in processes of their own (the same weights either way), or as one torchrun job."""
    cfgs = configs_from_args(stage, args)
    rank, world, _ = sat_processes.world()
    jobs = sat_processes.check_jobs(args.jobs, 1 if world > 1 else sat_processes.cpu_count())
    if world > 1 and jobs > 1:
        raise sat_cli.UserError(f"--jobs {jobs}: under torchrun every process trains the same run; leave --jobs out")
    jobs = min(jobs, len(cfgs))
    jobs = sat_smoke.smoke_settings("train", {"jobs": jobs})["jobs"]   # SAT_SMOKE=1: in this process
    for split in ("train", "test"):   # missing data: one error line now, not one per run after its folder is made
        sat_data.get_dataset(cfgs[0].dataset, split, cfgs[0].data, cfgs[0].image_size, cfgs[0].download)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfgs[0].device != "cpu" else "gloo"
        dist.init_process_group(backend, store=restart_safe_store(rank), rank=rank, world_size=world)
    t0 = time.time()
    timings = []
    kw = dict(resume=args.resume, force=args.force, stop_after_epoch=args.stop_after_epoch)
    try:
        if jobs > 1:   # one process per run (sat_processes.in_processes); results identical to --jobs 1
            print(f"{len(cfgs)} runs, {jobs} at a time (one process and one torch thread each); "
                  f"each run's printout goes to its train.log")
            done = {}
            jobs_list = [(stage.train, stage.run_name(cfg), cfg, kw) for cfg in cfgs]
            for i, (name, sec, last) in sat_processes.in_processes(train_logged, jobs_list, jobs):
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
