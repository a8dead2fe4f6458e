"""The harness of stage 04's evaluation: a reader of the paper may skip all of it; the protocol is in 04_eval.py.

What 04's main() calls around its attacks, the counterpart of sat_training_run for stage 03:
  randomness     each image's PGD start drawn from a generator seeded by (seed, its index in the evaluated list)
                 (`random_starts`); APGD, Square and AutoAttack draw per batch, so they attack fixed blocks of
                 --block images by index, block b seeded by (seed, b) (`block_seed`): neither the process count nor
                 --batch-size changes a number
  precision      the attacks run in float32 with TF32 off on CUDA (`attacks_at_full_precision`)
  a checkpoint   `evaluate_checkpoint`: its model, data set, eps and test images, block by block (sat_shards: this
                 process's share under torchrun, resume after a kill), the cache (sat_report), the result row with
                 every attack's parameters (`attack_params`)
  the command    `check_args` (one error line per bad value, SAT_SMOKE's cuts), `evaluate_all` (--jobs processes or
                 torchrun's, one printed row per checkpoint)
"""
import contextlib
import importlib
import math
import os
import sys
import time
import warnings

import torch

import sat_cli
import sat_files
import sat_models
import sat_processes
import sat_report
import sat_shards
import sat_smoke

acts = importlib.import_module("01_activations")
attack = importlib.import_module("02_pgd")


# ---- randomness and precision ----------------------------------------------------------------------------------

def random_starts(x, first, seed):
    """u (B, ...) uniform in [-1, 1], image i's drawn from a generator seeded by (seed, first + i), its index in
    the evaluated list: an image gets the same PGD start whatever batch, block or process it falls in. Every PGD
    of one image starts at eps * u (PGD-1/10/50/200 share it, so their curve isolates the effect of more steps)."""
    g, u = torch.Generator(), torch.empty(x.shape)
    for i in range(len(x)):
        g.manual_seed(seed * 2 ** 32 + first + i)
        u[i].uniform_(-1, 1, generator=g)
    return u.to(x.device)


def block_seed(seed, b):
    """The seed of block b's APGD, Square and AutoAttack, whose random draws are per batch: they attack one fixed
    block of images at a time (sat_shards), so neither --batch-size nor the process count changes a result."""
    return (seed * 1_000_003 + b) % 2 ** 31


def attacks_at_full_precision():
    """The attacks run in float32 with TF32 off: on Ampere and later GPUs cuDNN runs float32 convolutions in TF32
    (10-bit mantissa) by default, and a low-precision gradient can weaken an attack. Called by main() before any
    model is loaded; on the CPU the flags change nothing."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


# ---- what a result depends on: the cache key's settings, every attack's parameters -----------------------------

def attack_settings(*, autoattack, square_queries, apgd_steps, seed, max_pgd_steps, block):
    """Every setting that changes a result (and so goes in the cache key; "protocol" numbers the attack set)."""
    return {"autoattack": autoattack, "square_queries": square_queries, "apgd_steps": apgd_steps, "seed": seed,
            "max_pgd_steps": max_pgd_steps, "block": block, "protocol": 4}


def attack_params(stage, eps, num_classes, s, adaptive):
    """Every attack's parameters, written next to every number (per_run.csv); `stage` is 04_eval (its step counts)."""
    e = f"eps={eps * 255:.4g}/255"
    params = {"fgsm": f"{e} step=eps, no random start"}
    for k in stage.PGD_STEPS:
        params[f"pgd{k}"] = f"{e} step={attack.default_step(eps, k) * 255:.4g}/255 steps={k} random start, any-iterate"
    params["pgd200_sg"] = (f"{e} step={attack.default_step(eps, 200) * 255:.4g}/255 steps=200 through the smooth backward "
                           f"(sigmoid({acts.PSOFTPLUS_ALPHA:g}x) for ReLU's step, BPDA-style)" if adaptive
                           else "not run: no ReLU in the forward")
    params.update({f"apgd_{loss}": f"torchattacks.APGD {e} steps={s['apgd_steps']} restarts=1 loss={loss}" for loss in ("ce", "dlr")})
    if num_classes < 3:
        params["apgd_dlr"] = "not run: the DLR loss needs at least 3 classes"
    params["square"] = f"torchattacks.Square {e} queries={s['square_queries']} loss=margin"
    params["apgd_t"] = (f"pyautoattack APGD-T {e} steps={s['apgd_steps']} restarts=1 targets={min(9, num_classes - 1)} loss=targeted DLR"
                        if num_classes >= 4 else "not run: the targeted DLR loss needs at least 4 classes")
    if s["autoattack"]:
        params["autoattack"] = f"pyautoattack.AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square 5000) {e}"
    for f in stage.EPS_FACTORS:
        whole = " = the whole pixel box [0, 1]" if eps * f >= 1 else ""
        params[f"eps_x{f:g}"] = f"PGD-20 at {f:g} x eps = {eps * f * 255:.4g}/255{whole}"
    return params


# ---- one checkpoint ------------------------------------------------------------------------------------------

def evaluate_checkpoint(stage, path, args, device, position=0):
    """Every attack of `stage` (04_eval) on one checkpoint: its own model, data set and eps (or --eps), its test
    images (--subset, --limit), block by block, this process's share of the blocks under torchrun (sat_shards). A
    killed run resumes from the blocks saved. Returns (result, cached) on rank 0, (None, cached) on the other ranks.
    The result carries the run's configuration, which the tables group by."""
    model, ckpt = sat_models.model_from_checkpoint(path, device)
    cfg = ckpt["config"]
    eps_px = args.eps if args.eps is not None else cfg["eps"]
    s = attack_settings(autoattack=args.autoattack, square_queries=args.square_queries, apgd_steps=args.apgd_steps,
                        seed=0, max_pgd_steps=args.max_pgd_steps, block=args.block)
    subset = args.subset if cfg["dataset"] == "imagenet" else "all"   # RobustBench's list names ImageNet images
    key = sat_report.cache_key(path, args, cfg, s, subset)
    cache = sat_report.cache_file(path, args)
    saved = sat_processes.broadcast(None if args.no_cache else sat_report.cached_result(cache, key) or sat_report.result_of_same_final(path, ckpt, args, s, subset))
    if saved is not None:
        return saved, True
    images = sat_report.test_images(cfg, args.data, args.limit, subset)
    eps, adaptive = attack.px(eps_px), stage.has_relu(model)
    smooth = stage.smooth_backward_copy(model) if adaptive else None
    run = sat_shards.Blocks(len(images), args.block, cache[:-len(".json")] + f".parts-{sat_shards.key_hash(key)}",
                            desc=os.path.basename(os.path.dirname(path)), position=position)
    with autoattack_warnings(os.path.basename(os.path.dirname(path))):
        for b, first, x, y in run.todo(images, sat_report.loader_workers(images)):
            run.save(b, stage.block_masks(model, x.to(device), y.to(device), first, b, eps, cfg["num_classes"], s, smooth))
    masks = run.gather()   # every image's masks on rank 0
    if masks is None:
        return None, False
    res = stage.summarize(masks, attack_params(stage, eps, cfg["num_classes"], s, adaptive), eps, cfg["num_classes"])
    res.update(run=os.path.basename(os.path.dirname(path)) + ("@best" if ckpt.get("selected") == "best" else ""), path=path, dataset=cfg["dataset"], model=cfg["model"],
               act=cfg["act"], smooth_grad=cfg["smooth_grad"], train_attack=cfg["attack"], seed=cfg["seed"],
               eps_px=eps_px, epochs=ckpt.get("epoch"), subset=subset, checkpoint=ckpt.get("selected", "final"),
               recipe={**sat_report.recipe(cfg), **({"checkpoint": "best"} if ckpt.get("selected") == "best" else {})})
    sat_files.write_json(cache, {"key": key, "result": res})
    run.remove_parts()
    return res, False


@contextlib.contextmanager
def autoattack_warnings(name):
    """pyautoattack's automatic checks warn once per batch (18 times on notebook 4's masked model), each pointing to a
    flags_doc.md that is not installed: here they become one line per checkpoint with the address of that page.
    Other warnings pass as they are."""
    with warnings.catch_warnings(record=True) as caught:   # recorded: what the filters let through, as usual...
        warnings.filterwarnings("always", message=".*flags_doc.md")   # ...and every one of pyautoattack's, counted
        yield
    ours = [w for w in caught if "flags_doc.md" in str(w.message)]
    for w in caught:
        if w not in ours:   # shown as they would have been (the filters have already been applied)
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if ours:
        first = str(ours[0].message).split(" See flags_doc.md")[0]
        print(f"{name}: pyautoattack's checks warned {len(ours)} times (first: {first}); the flags column says whether "
              f"an attack failed; the checks: https://github.com/fra31/auto-attack/blob/master/flags_doc.md",
              file=sys.stderr, flush=True)


def evaluate_job(job):
    """One (stage module name, path, args, device, bar position) in this process or a --jobs worker: (result, cached,
    seconds). The stage is named, not passed, so that a job pickles into a fresh worker process."""
    stage_name, path, args, device, position = job
    t = time.time()
    r, cached = evaluate_checkpoint(importlib.import_module(stage_name), path, args, torch.device(device), position)
    return r, cached, time.time() - t


# ---- a user's own model: a state dict made a checkpoint of this repo's format -----------------------------------

def own_state_dict(path):
    """The tensors of --own-model: a plain state dict (or one under "model" / "state_dict"; DDP's "module." prefixes
    dropped), read with weights_only=True. A bad file is one UserError line."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # missing, truncated, not a torch file, a forbidden global
        raise sat_cli.UserError(f"--own-model {path!r} is not a readable state dict ({e.__class__.__name__}: {str(e).strip()[:120]})")
    if isinstance(sd, dict) and isinstance(sd.get("model", sd.get("state_dict")), dict):
        sd = sd.get("model", sd.get("state_dict"))
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise sat_cli.UserError(f"--own-model {path!r} holds no state dict (a dict of tensors, as torch.save(model.state_dict()) writes)")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def own_checkpoint(args):
    """--own-model: the user's state dict on --arch with --act's activations and --dataset's normalisation, saved
    as <out>/own/<file name>/final.pt, a checkpoint of this repo's format (config + model), which stage 04 then
    evaluates as it evaluates its own (the same tables). Keys "0.mean", "0.std", "1.<layer>" are this repo's
    Sequential(Normalize, net); any other keys are the bare network's, given the data set's mean and std in front.
    Returns the checkpoint's path; sets args.runs to its folder (the cache is named below it)."""
    import sat_data
    sd = own_state_dict(args.own_model)
    name = sat_models.check_model_name(args.arch, args.dataset)
    if not ("0.mean" in sd and "0.std" in sd):   # a bare network: normalisation in front, as in every model here
        mean, std = sat_data.STATS[args.dataset]
        sd = {"0.mean": torch.tensor(mean).view(1, -1, 1, 1), "0.std": torch.tensor(std).view(1, -1, 1, 1),
              **{f"1.{k}": v for k, v in sd.items()}}
    data = args.data or "data"
    size = sat_models.usual_image_size(name) if args.dataset == "imagenet" else 224
    classes = sat_data.num_classes_of(args.dataset, None if args.dataset in sat_data.NUM_CLASSES else
                                      sat_data.get_dataset(args.dataset, "test", data, size))
    cfg = {"dataset": args.dataset, "data": data, "model": name, "image_size": size, "num_classes": classes,
           "act": args.act, "smooth_grad": "none", "attack": "own model", "eps": args.eps or attack.EPS_PX[args.dataset],
           "seed": 0, "own_model": os.path.abspath(args.own_model)}
    if name in ("digitsnet", "fashionnet"):
        cfg["width"] = sd["1.stem.0.weight"].shape[0] if "1.stem.0.weight" in sd else 16
    model = sat_models.build_model(cfg)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise sat_cli.UserError(f"--own-model {args.own_model!r} does not fit --arch {args.arch} on {args.dataset} "
                                f"({classes} classes): {'; '.join(line.strip() for line in str(e).splitlines()[:2])[:240]}")
    args.runs = os.path.join(args.out, "own")
    path = os.path.join(args.runs, os.path.splitext(os.path.basename(args.own_model))[0], "final.pt")
    sat_files.save_checkpoint({"kind": "own", "model": model.state_dict(), "config": cfg}, path)
    return path


# ---- the command: its checks, every checkpoint over processes -------------------------------------------------

def parse_args(stage, argv=None):
    """Stage 04's command line (`stage` is 04_eval: its defaults), checked by check_args."""
    p = sat_cli.ArgumentParser(description="Evaluate every checkpoint under --runs (see the module docstring).")
    p.add_argument("--runs", default=sat_files.RUNS_DIR, help="folder searched for final.pt files (default runs: its 02_pgd/ and 03_adv_train/)")
    p.add_argument("--out", default=stage.OUT_DIR, help="output folder (default runs/04_eval; runs/04_eval_best with --checkpoint best)")
    p.add_argument("--results", default=None, help="also copy the tables and the per-run and per-image results (small "
                   "CSV / JSON files) to this folder, e.g. results/<study> (kept in git)")
    p.add_argument("--checkpoint", nargs="+", default=["final"], choices=["final", "best"],
                   help="final: each run's last epoch (final.pt); best: its early-stopped epoch (best.pt, the best "
                   "validation PGD-10; runs with a validation split only); `final best`: rows of each kind in one table "
                   "(default: final)")
    p.add_argument("--data", default=None, help="cifar10/fashionmnist/imagenet data folder (default: the one in the checkpoint's config)")
    p.add_argument("--subset", default="all", choices=["all", "robustbench"],
                   help="all test images, or for ImageNet checkpoints RobustBench's 5,000 validation images "
                   "(resources/README.md; the other checkpoints keep their whole test split)")
    p.add_argument("--eps", type=sat_cli.pixels("--eps"), default=None, help="evaluate at this eps, pixel units, 8 or 8/255 (default: each checkpoint's own)")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N test images only (0 = all)")
    p.add_argument("--block", type=int, default=stage.BLOCK, help="images per block: the attack batch and the unit of the "
                   f"attacks' randomness (a change re-draws APGD's and Square's; larger blocks use a GPU better; default: {stage.BLOCK})")
    p.add_argument("--batch-size", type=int, default=None, help="kept for old commands: the attack batch is --block")
    p.add_argument("--apgd-steps", type=int, default=stage.APGD_STEPS, help=f"APGD iterations (default: {stage.APGD_STEPS})")
    p.add_argument("--square-queries", type=int, default=stage.SQUARE_QUERIES, help=f"Square attack queries (default: {stage.SQUARE_QUERIES})")
    p.add_argument("--autoattack", action="store_true", help="also run the reference AutoAttack's standard set (slow)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    p.add_argument("--no-cache", action="store_true", help="re-evaluate every checkpoint")
    p.add_argument("--jobs", type=int, default=None, help="checkpoints evaluated at once, one process and one torch "
                   "thread each (default: one per core on the CPU, 1 on a GPU; under torchrun: 1, the images are split)")
    p.add_argument("--own-model", metavar="WEIGHTS.pt", default=None, help="evaluate your own model instead: a state dict "
                   "(torch.save(model.state_dict())) of --arch with --act, on --dataset (docs/SNIPPETS.md); tables in --out "
                   "(default runs/04_eval_own)")
    p.add_argument("--arch", default=None, help="--own-model's architecture: a torchvision model (resnet18, resnet50, ...) "
                   "or this repo's digitsnet, fashionnet, cifar_resnet18 (default: the data set's preset model)")
    p.add_argument("--act", default="relu", choices=list(acts.ACTIVATIONS), help="--own-model's activation (default relu)")
    p.add_argument("--dataset", default="digits", choices=["digits", "cifar10", "fashionmnist", "imagenet"],
                   help="--own-model's data set: its test split, normalisation, eps (default digits, built in)")
    p.add_argument("--compare-results", metavar="DIR", default=None,
                   help="attack nothing: compare a study again from its small files in DIR (results/<study>: per_image.json, "
                   "per_run.csv) and write comparisons.md/.csv to --out (and to --results)")
    return check_args(p.parse_args(argv), stage.OUT_DIR)


def check_args(args, out_dir):
    """04's parsed command line, checked (one UserError line for the first bad value, before any work) and completed:
    SAT_SMOKE=1 (the command tests) cuts the images and the attacks' steps; --checkpoint best writes to <out>_best."""
    sat_cli.check_number("--limit", args.limit, 0, math.inf, hint=" (0 = every test image)")
    sat_cli.check_number("--block", args.block, 1, math.inf)
    if args.batch_size is not None:
        sat_cli.check_number("--batch-size", args.batch_size, 1, math.inf)
    sat_cli.check_number("--apgd-steps", args.apgd_steps, 1, 100_000)
    sat_cli.check_number("--square-queries", args.square_queries, 1, 1_000_000)
    sat_processes.check_jobs(args.jobs, 1)   # a bad --jobs: one line before any work; its default needs the device
    if sat_processes.world()[1] > 1 and (args.jobs or 1) > 1:
        raise sat_cli.UserError("--jobs > 1 under torchrun: the processes already share each checkpoint's images")
    if args.eps is not None:
        attack.check_px("--eps", args.eps)
    args.max_pgd_steps = None   # SAT_SMOKE=1 (the command tests): a few images, a few steps of each attack
    vars(args).update(sat_smoke.smoke_settings("eval", {k: getattr(args, k) for k in ("limit", "max_pgd_steps", "apgd_steps", "square_queries")}))
    if args.own_model:
        args.arch = args.arch or {"digits": "digitsnet", "fashionmnist": "fashionnet", "cifar10": "cifar_resnet18"}.get(args.dataset)
        if args.arch is None:
            raise sat_cli.UserError("--own-model on imagenet needs --arch (a torchvision model such as resnet50)")
        if not os.path.isfile(args.own_model):
            raise sat_cli.UserError(f"--own-model {args.own_model!r}: no such file")
        if args.out == out_dir:
            args.out = out_dir + "_own"
        sat_cli.check_out_dir(args.out)
    if "best" in args.checkpoint and args.out == out_dir:
        args.out = out_dir + "_best"   # tables of their own: rows "[best epoch]" beside the final ones if both asked
    return args


def evaluate_all(stage, args, paths):
    """evaluate_checkpoint for every path: --jobs at a time in processes of their own on the CPU (one torch thread
    each, the same numbers as --jobs 1), or each checkpoint's blocks shared by torchrun's processes. Prints the
    header and one row per checkpoint; returns the results in the order of `paths` (None on ranks other than 0)."""
    attacks_at_full_precision()
    device = sat_processes.start(sat_processes.pick_device(args.device))   # under torchrun: its process group, its GPU
    rank, world, _ = sat_processes.world()
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"evaluating {len(paths)} checkpoint(s) on {device}" + (f" x {world} processes" if world > 1 else "") +
        f"; attacks: FGSM, PGD-{{{','.join(map(str, stage.PGD_STEPS))}}} (step max(eps/4, eps/k); eps/4 for 200), "
        f"PGD-200 through the smooth backward (ReLU models), APGD-CE/DLR and APGD-T ({args.apgd_steps} steps), "
        f"Square ({args.square_queries} queries)" + (", AutoAttack (reference)" if args.autoattack else ""))
    say(sat_report.ROW_HEADER)
    jobs = 1 if world > 1 else min(args.jobs or (sat_processes.cpu_count() if device.type == "cpu" else 1), len(paths))
    jobs = sat_smoke.smoke_settings("eval", {"jobs": jobs})["jobs"]   # SAT_SMOKE=1: in this process
    if world > 1 and device.type == "cpu":
        torch.set_num_threads(1)   # as in_processes: one thread per process, the same numbers as one process
    results = [None] * len(paths)
    todo = [(stage.__name__, path, args, str(device), i % jobs) for i, path in enumerate(paths)]
    for i, (r, cached, sec) in sat_processes.in_processes(evaluate_job, todo, jobs):
        results[i] = r
        if rank == 0:
            sat_report.print_row(r, cached, sec)
    sat_processes.stop()
    return results if rank == 0 else None
