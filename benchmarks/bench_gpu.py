"""The GPU numbers: how fast smooth adversarial training of ResNet-50 runs on one GPU, what a batch costs in
memory, what feeds the GPU, what the evaluation costs, and whether a low-precision attack is weaker.

Six parts, each printed and written to --csv as a row (part, setting, value, unit) as soon as it is measured:
  1. train    ResNet-50, 224 px, synthetic data already on the GPU: images/s of a standard training step and
              of a PGD-1 adversarial step (stage 03's adversarial_training_step, steps 0 and 1) in fp32 (TF32
              for convolutions as PyTorch defaults: cuDNN on, matmul off), bf16, bf16 + channels_last and
              bf16 + channels_last + torch.compile; the adversarial/standard ratio; peak memory; the time of
              the first calls (compiling). Then ReLU, SiLU and GELU in the fastest eager setting, as a ratio
              to ReLU, and again compiled if compiling is faster; the cifar10 preset's PGD-1 step (ResNet-18,
              batch 128) and its 100 epochs' time. The compiled setting runs after parts 2-6:
              each compiled model takes a minute or more to compile, and none starts unless --time-limit
              leaves it COMPILE_S (180 s). The paper's 100 ImageNet epochs in hours on 1 and 8 GPUs at the
              fastest eager setting's speed, then again if compiling is faster.
  2. batch    the PGD-1 step against the batch size (64, 128, 256, 512) in the fastest eager setting: images/s,
              memory.
  3. eval     ResNet-50 attack passes (an input-only forward-backward, a forward) per image in float32 with
              TF32 off (how stage 04 attacks), and from them the time of stage 04's whole attack set (at most
              1,662 forward-backward and 1,011 forward passes per image, docs/SCALING.md) for 5,000 and 50,000
              images on 1 and 8 GPUs; and on trained digits checkpoints (--digits-runs): images/s of PGD-200 with
              early stopping, APGD-CE and Square.
  4. precision PGD-200 robust accuracy of the same digits checkpoints with the attack under bf16 autocast
              against float32 with TF32 off (the same random starts).
  5. loader   decode + RandomResizedCrop + flip of generated 500x375 JPEGs (stage 03's ImageNet pipeline) with
              4, 8 and 16 loader workers, and torchvision's GPU JPEG decoding (decode_jpeg on the device,
              nvjpeg); how many cores keep one GPU busy at the fastest setting's training speed.
  6. profile  a sync check (torch.cuda.set_sync_debug_mode("error") around adversarial steps: any host-device
              sync inside a step raises) and torch.profiler's top kernels of one adversarial step (the
              table printed, the top 5 by self time in the CSV, a Chrome trace written beside the CSV).

An error in one part (a path that never ran on a GPU: nvjpeg, 16 loader workers, a compile) becomes a row
"error in <part>" and the next part runs; bad arguments are one `error:` line and exit code 2.

Run it on a machine with an NVIDIA GPU (`bash benchmarks/gpu_check.sh bench` does both, planned to fit in ten
minutes of an H200 with --time-limit 420; it has not run on a GPU yet):
    python 03_adv_train.py --device cuda --act relu silu --smooth-grad none --quiet --out runs/gpu_digits
    python benchmarks/bench_gpu.py --digits-runs runs/gpu_digits --csv docs/gpu_numbers.csv
On the CPU it runs every part at toy sizes (ResNet-50 at 32 px, batch 4, one step each, torch.compile with
its "eager" backend: traced, not compiled) to check the script itself: `python benchmarks/bench_gpu.py --quick`
(~15 s). Its figures then say nothing about a GPU.
"""
import argparse
import contextlib
import csv
import dataclasses
import importlib
import os
import sys
import tempfile
import time

T0 = time.monotonic()   # --time-limit counts from here, torch's import included

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import sat_cli  # noqa: E402
import sat_data  # noqa: E402
import sat_eval_run  # noqa: E402
import sat_files  # noqa: E402
import sat_models  # noqa: E402
import sat_smoke  # noqa: E402

attack = importlib.import_module("02_pgd")
train_mod = importlib.import_module("03_adv_train")
from bench_eval_scaling import passes_per_image  # noqa: E402  (this script's folder, benchmarks/, is on sys.path)

ROWS = []
COMPILE_S = 180   # seconds a compiled ResNet-50 is assumed to take to compile (two graphs; not measured yet)
COMPILE_BACKEND = "inductor"   # --quick: "eager" (dynamo traces the model, runs no compiled kernels: seconds)
CSV = None   # the open CSV writer: each row is written (and flushed) as it is measured, so a run stopped by a
#              timeout keeps every figure it took


def record(part, setting, value, unit):
    ROWS.append((part, setting, value, unit))
    if CSV is not None:
        CSV[1].writerow((part, setting, value, unit))
        CSV[0].flush()
    print(f"  {part:<9} {setting:<46} {value:>12.4g} {unit}" if isinstance(value, float) else
          f"  {part:<9} {setting:<46} {value!s:>12} {unit}", flush=True)


def guarded(part, fn, *args, **kwargs):
    """fn(*args, **kwargs), or None after an error in it, which becomes a row of its own: on a GPU, where this
    script runs once in a time-boxed call, one failing part (nvjpeg, a loader worker, a compile) must not take
    the other parts with it."""
    try:
        return fn(*args, **kwargs)
    except sat_cli.UserError:   # bad input stays one error line and exit code 2
        raise
    except Exception as e:   # noqa: BLE001  (anything else: recorded, then the next part)
        first_line = (str(e).strip().splitlines() or [""])[0][:120]
        record(part, f"error in {fn.__name__}", f"{type(e).__name__}: {first_line}", "")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, iters, warmup):
    """Seconds per call of fn, after `warmup` calls, with the GPU's queue drained before and after."""
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t) / iters


def peak_memory(device, fn):
    """Peak GPU memory (GiB) allocated during a call of fn (the model, its optimizer state and the batch
    included); nan on the CPU."""
    if device.type != "cuda":
        fn()
        return float("nan")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


@contextlib.contextmanager
def full_precision():
    """Stage 04's attack precision (float32, TF32 off) inside the block; PyTorch's defaults restored after it."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    sat_eval_run.attacks_at_full_precision()
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])


CLASSES = {"imagenet": 1000, "cifar10": 10}


def preset_model(act, device, channels_last, compiled, size, preset="imagenet"):
    """Stage 03's model of a preset (ImageNet: ResNet-50 with `act`, for `size` px; cifar10: its ResNet-18) and its
    optimizer; the model the step runs (compiled or not)."""
    cfg = train_mod.preset_config(preset, act=act, **({"image_size": size} if preset == "imagenet" else {}))
    model = sat_models.build_model({**dataclasses.asdict(cfg), "num_classes": CLASSES[preset]}).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = train_mod.make_optimizer(model, cfg)
    return cfg, (torch.compile(model, backend=COMPILE_BACKEND) if compiled else model), opt


def train_step_fn(act, setting, batch, size, device, preset="imagenet"):
    """A zero-argument training step (standard: steps=0, adversarial: PGD-1) in one of the settings of part 1."""
    bf16, cl, comp = "bf16" in setting, "channels_last" in setting, "compile" in setting
    cfg, model, opt = preset_model(act, device, cl, comp, size, preset)
    x = torch.rand(batch, 3, size, size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    y = torch.randint(0, CLASSES[preset], (batch,), device=device)
    eps = attack.px(cfg.eps)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step(steps):
        return lambda: train_mod.adversarial_training_step(model, x, y, opt, eps, eps, steps, cfg.rand_start_prob,
                                                           autocast=autocast)
    return step


def part_train(device, size, batch, settings, iters, warmup):
    """Standard and PGD-1 steps of ReLU's ResNet-50 in each setting; returns {setting: (PGD-1 images/s, seconds
    of the first calls)}. The first calls of a compiled model compile it: their time is a figure too."""
    rates = {}
    for setting in settings:
        step = train_step_fn("relu", setting, batch, size, device)
        res, firsts = {}, 0.0
        for kind, steps in (("standard", 0), ("PGD-1 adversarial", 1)):
            t = time.perf_counter()
            step(steps)()   # the first call: compiles (torch.compile), picks cuDNN's algorithms (benchmark mode)
            sync(device)
            first = time.perf_counter() - t
            firsts += first
            sec = timed(step(steps), device, iters, warmup)
            mem = peak_memory(device, step(steps))   # a warm call: no autotuning workspace in the peak
            res[kind] = batch / sec
            record("train", f"{setting}: {kind} images/s", batch / sec, "img/s")
            record("train", f"{setting}: {kind} peak memory", mem, "GiB")
            record("train", f"{setting}: {kind} first call (compile, autotune)", first, "s")
        ratio = res["standard"] / res["PGD-1 adversarial"]
        record("train", f"{setting}: adversarial/standard time", ratio, "x")
        rates[setting] = (res["PGD-1 adversarial"], firsts)
        del step
    return rates


def part_acts(device, size, batch, setting, acts, iters, warmup, deadline, relu_sec, per_model_s=0.0):
    """The PGD-1 step of each activation's ResNet-50 against ReLU's, in one setting; `relu_sec` is ReLU's seconds
    per step there, which part 1 measured. A new model is started only while the deadline leaves it
    `per_model_s` seconds (a compiled model's first call compiles it)."""
    for act in acts:
        if act == "relu":
            sec = relu_sec
        elif time.monotonic() + per_model_s > deadline:
            record("train", f"{setting}: PGD-1 step, {act}", "skipped: --time-limit", "")
            continue
        else:
            sec = timed(train_step_fn(act, setting, batch, size, device)(1), device, iters, warmup)
        record("train", f"{setting}: PGD-1 step, {act}, time / ReLU's", sec / relu_sec, "x")
        record("train", f"{setting}: PGD-1 step, {act}, images/s", batch / sec, "img/s")


def part_cifar(device, setting, iters, warmup, batch=None):
    """The cifar10 preset's PGD-1 step (its ResNet-18, 32 px, its batch of 128 unless `batch`) and the time of
    its 100 epochs."""
    cfg = train_mod.preset_config("cifar10")
    batch = batch or cfg.batch_size
    sec = timed(train_step_fn("relu", setting, batch, 32, device, "cifar10")(1), device, iters, warmup)
    n_train = 50_000 - cfg.val_size   # the preset holds out a validation split of the training set
    record("train", f"cifar10 preset ({cfg.model}, batch {batch}), {setting}: PGD-1 images/s", batch / sec, "img/s")
    record("train", f"cifar10 preset: {cfg.epochs} epochs of {n_train} images, 1 GPU (steps alone)",
           cfg.epochs * n_train * sec / batch / 3600, "h")


def part_batch(device, size, batches, setting, iters, warmup):
    print(f"\n2. PGD-1 step against the batch size ({setting})")
    for b in batches:
        step = None   # the previous batch's model, optimizer state and input are freed before this one's peak
        try:
            step = train_step_fn("relu", setting, b, size, device)(1)
            sec = timed(step, device, iters, warmup)
            mem = peak_memory(device, step)
        except torch.OutOfMemoryError:
            record("batch", f"batch {b}", "out of memory", "")
            torch.cuda.empty_cache()
            continue
        record("batch", f"batch {b}: images/s", b / sec, "img/s")
        record("batch", f"batch {b}: peak memory", mem, "GiB")


def part_eval_resnet(device, size, batch, iters, warmup):
    print(f"\n3a. attack passes of ResNet-50 ({size} px, batch {batch}, float32, TF32 off)")
    cfg, model, _ = preset_model("relu", device, False, False, size)
    model.eval()
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    eps = attack.px(cfg.eps)
    with full_precision():
        fb = timed(lambda: attack.pgd(model, x, y, eps, eps, 1, 0.0), device, iters, warmup) / batch
        with torch.no_grad():
            fw = timed(lambda: model(x), device, iters, warmup) / batch
    record("eval", "ResNet-50 forward-backward (input only) per image", 1e3 * fb, "ms")
    record("eval", "ResNet-50 forward per image", 1e3 * fw, "ms")
    passes_fb, passes_fw = passes_per_image()   # stage 04's default attack set, at most (bench_eval_scaling.py)
    per_image = passes_fb * fb + passes_fw * fw
    record("eval", "whole attack set per image, at most", per_image, "s")
    for n in (5000, 50000):
        for gpus in (1, 8):
            record("eval", f"whole attack set, {n} images, {gpus} GPU(s), at most", per_image * n / gpus / 3600, "h")


def digits_final_pts(runs):
    """The final.pt files under --digits-runs (checked before anything is measured)."""
    paths = sorted(os.path.join(d, "final.pt") for d, _, files in os.walk(runs) if "final.pt" in files)
    if not paths:
        raise sat_cli.UserError(f"--digits-runs {runs}: no final.pt under it")
    return paths


def digits_checkpoints(runs, quick, device, scratch):
    """(name, model) of every final.pt under `runs`; with none given and --quick, one trained in `scratch` in seconds."""
    if runs:
        paths = digits_final_pts(runs)
    elif quick:
        cfg = train_mod.preset_config("digits", act="relu", epochs=2, milestones=[], out=os.path.join(scratch, "digits_relu"))
        paths = [train_mod.train(cfg, quiet=True)]
    else:
        return []
    out = []
    for p in paths:
        model, ckpt = sat_models.model_from_checkpoint(p)
        if ckpt["config"]["dataset"] != "digits":
            raise sat_cli.UserError(f"--digits-runs: {p} is a {ckpt['config']['dataset']} checkpoint, not digits")
        out.append((os.path.basename(os.path.dirname(p)), model.to(device).eval()))
    return out


def part_eval_digits(device, checkpoints, n_images, apgd_steps, square_queries):
    import torchattacks
    if not checkpoints:
        print("\n3b/4. no --digits-runs given: the digits attacks and the precision check are skipped")
        return
    x, y = sat_data.digits_tensors("test")
    x, y = x[:n_images], y[:n_images]
    x, y = x.to(device), y.to(device)
    eps = attack.px(attack.EPS_PX["digits"])
    step = attack.default_step(eps, 200)
    print(f"\n3b/4. digits checkpoints on {device}: {len(y)} test images, eps 64/255")
    for name, model in checkpoints:
        g = torch.Generator().manual_seed(0)
        delta0 = ((torch.rand(x.shape, generator=g) * 2 - 1) * eps).to(device)
        runs = {}
        for label, ctx in (("float32, TF32 off", full_precision),
                           ("bf16 autocast", lambda: torch.autocast(device.type, dtype=torch.bfloat16))):
            with ctx():
                sync(device)
                t = time.perf_counter()
                broken = attack.pgd_eval(model, x, y, eps, step, 200, delta0=delta0)
                sync(device)
                runs[label] = ((broken == -1).float().mean().item(), time.perf_counter() - t)
            record("eval", f"{name}: PGD-200 (early stop), {label}", len(y) / runs[label][1], "img/s")
            record("precision", f"{name}: PGD-200 robust accuracy, {label}", 100 * runs[label][0], "%")
        diff = 100 * (runs["bf16 autocast"][0] - runs["float32, TF32 off"][0])
        record("precision", f"{name}: bf16 minus float32 (positive: bf16 attack weaker)", diff, "points")
        with full_precision():
            for label, atk in (("APGD-CE", torchattacks.APGD(model, norm="Linf", eps=eps, steps=apgd_steps, loss="ce", seed=0)),
                               ("Square", torchattacks.Square(model, norm="Linf", eps=eps, n_queries=square_queries, seed=0))):
                sync(device)
                t = time.perf_counter()
                atk(x, y)
                sync(device)
                record("eval", f"{name}: {label} ({apgd_steps if label == 'APGD-CE' else square_queries})",
                       len(y) / (time.perf_counter() - t), "img/s")


def write_jpegs(folder, n, rng):
    """n 500x375 JPEGs in 4 class folders: smooth colour blobs plus noise, about 110 KB each, the mean size of an
    ImageNet training JPEG (138 GB / 1,281,167 files); pure noise would be 170 KB and twice as slow to decode.
    Returns their mean size in KB."""
    from PIL import Image
    sizes = []
    for i in range(n):
        d = os.path.join(folder, "train", f"class{i % 4}")
        os.makedirs(d, exist_ok=True)
        blobs = Image.fromarray(rng.randint(0, 256, (47, 63, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
        img = (np.asarray(blobs, dtype=np.int16) + rng.normal(0, 18, (375, 500, 3))).clip(0, 255).astype(np.uint8)
        path = os.path.join(d, f"{i}.JPEG")
        Image.fromarray(img).save(path, quality=90)
        sizes.append(os.path.getsize(path) / 1024)
    return float(np.mean(sizes))


def part_loader(device, n_images, workers_list, batch, size, scratch, min_s):
    """Images/s of stage 03's ImageNet input pipeline per number of loader workers; returns the images/s one
    worker (one core) gives, the median over the worker counts."""
    print(f"\n5. input pipeline: {n_images} generated 500x375 JPEGs, decode + RandomResizedCrop({size}) + flip")
    folder = os.path.join(scratch, "jpegs")
    record("loader", "mean JPEG size", write_jpegs(folder, n_images, np.random.RandomState(0)), "KB")
    # each image's crop and flip drawn from (seed, epoch, image), asked for by (epoch, index) keys, as in stage 03
    ds = sat_data.SeededAugmentation(sat_data.get_dataset("imagenet", "train", folder, size), seed=0)
    keys = [(0, i) for i in torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()]
    per_worker = []
    for w in workers_list:
        # batches of 32: two per worker and epoch even with 16 workers (with 256, 4 batches would keep 4 busy);
        # persistent workers as in stage 03; one untimed epoch starts them and reads the files into the page cache
        loader = torch.utils.data.DataLoader(ds, batch_size=32, sampler=keys, num_workers=w, persistent_workers=w > 0,
                                             pin_memory=device.type == "cuda", prefetch_factor=4 if w else None,
                                             generator=torch.Generator().manual_seed(0))
        sum(1 for _ in loader)
        t, seen = time.perf_counter(), 0
        while seen == 0 or time.perf_counter() - t < min_s:   # whole epochs, for at least min_s seconds
            seen += sum(len(yb) for _, yb in loader)
        rate = seen / (time.perf_counter() - t)
        del loader                           # its workers stop before the next count starts
        per_worker.append(rate / max(w, 1))
        record("loader", f"CPU decode, {w} workers: images/s", rate, "img/s")
    # torchvision's own decoder on the device (nvjpeg on a GPU; on the CPU, --quick checks the code): a batch of
    # files in memory decoded in one call, then the same crop and flip per image, as floats in [0, 1].
    # torchvision 0.29 deprecates its decoders for TorchCodec's (a warning on each call, silenced here); the GPU
    # machines' 0.26 does not
    import warnings
    warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import v2
    crop = torch.nn.Sequential(v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip())
    datas = [read_file(p) for p, _ in ds.dataset.samples][:batch]

    def decode_batch():
        return torch.stack([crop(im) for im in decode_jpeg(datas, device=device)]).float().div_(255)
    assert decode_batch().shape == (len(datas), 3, size, size)
    sec = timed(decode_batch, device, 3, 1)
    record("loader", f"torchvision decode_jpeg on {device.type} + crop there: images/s", len(datas) / sec, "img/s")
    return float(np.median(per_worker))


def part_profile(device, setting, batch, size, out_dir):
    print(f"\n6. hot path ({setting}, batch {batch})")
    step = train_step_fn("relu", setting.replace(" + compile", ""), batch, size, device)(1)
    step()
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                step()
            sync(device)
            record("profile", "host-device syncs inside an adversarial step", 0, "(set_sync_debug_mode: error)")
        except RuntimeError as e:
            record("profile", "host-device sync inside an adversarial step", str(e).splitlines()[0][:80], "")
        finally:
            torch.cuda.set_sync_debug_mode(0)
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    events = prof.key_averages()
    print(events.table(sort_by=key, row_limit=12, max_name_column_width=60))
    self_key = "self_" + key   # the top 5 operators/kernels by their own time (children excluded) go into the CSV
    top = sorted(events, key=lambda e: getattr(e, self_key), reverse=True)[:5]
    for i, e in enumerate(top, 1):
        record("profile", f"top {i} by self {key.split('_')[0]} time: {e.key[:50]}", getattr(e, self_key) / 1e3, "ms")
    trace = os.path.join(out_dir, "bench_gpu_trace.json")
    prof.export_chrome_trace(trace)
    record("profile", "Chrome trace of one adversarial step", os.path.relpath(trace, ROOT), "")


def summary(rates, fastest, per_core, label):
    """The fastest setting (of the eager ones, or of all with torch.compile), the paper's 100 epochs in hours at
    its speed, and the loader cores that speed needs."""
    if fastest not in rates:
        return
    rate = rates[fastest][0]
    record("train", f"fastest setting ({label})", fastest, "")
    for gpus in (1, 8):   # ImageNet's 1,281,167 training images; 8 GPUs: if the speed scales linearly
        record("train", f"the paper's 100 epochs, {fastest}, {gpus} GPU(s)", 100 * 1_281_167 / rate / gpus / 3600, "h")
    if per_core:
        record("loader", f"CPU cores (loader workers) to feed {fastest} ({rate:.0f} img/s)", rate / per_core, "cores")


def main(argv=None):
    sat_cli.run_cli(bench, argv)


def bench(argv):
    global CSV, COMPILE_BACKEND
    p = sat_cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=None, help="the figures as CSV (default: docs/gpu_numbers.csv on a GPU, "
                   "runs/benchmarks/gpu_numbers_cpu.csv on the CPU)")
    p.add_argument("--digits-runs", default=None, help="folder of trained digits runs for parts 3b and 4")
    p.add_argument("--batch", type=int, default=256, help="per-GPU batch of parts 1 and 6")
    p.add_argument("--quick", action="store_true", help="toy sizes (the CPU check of this script)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile setting")
    p.add_argument("--parts", default="1,2,3,4,5,6", help="comma-separated parts to run")
    p.add_argument("--time-limit", type=float, default=0, help="seconds: no torch.compile model is started past "
                   "them (compiling takes a minute or more each; 0: no limit)")
    args = p.parse_args(argv)
    sat_cli.check_number("--batch", args.batch, lo=1)
    sat_cli.check_number("--time-limit", args.time_limit, lo=0)
    if args.digits_runs:
        digits_final_pts(args.digits_runs)
    deadline = T0 + (args.time_limit or float("inf"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick or sat_smoke.SMOKE or device.type == "cpu"
    parts = {int(s) for s in args.parts.split(",") if s.strip().isdigit()}
    if not parts or not parts <= set(range(1, 7)) or len(parts) != len([s for s in args.parts.split(",") if s.strip()]):
        raise sat_cli.UserError(f"--parts {args.parts}: accepted 1 to 6, comma-separated")
    csv_path = args.csv or (os.path.join(ROOT, "docs", "gpu_numbers.csv") if device.type == "cuda" else
                            os.path.join(sat_files.RUNS_DIR, "benchmarks", "gpu_numbers_cpu.csv"))
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    if quick:
        size, batch, batches, iters, warmup = 32, 4, [4], 1, 0   # no warm-up: the first call is one
        settings = ["fp32", "bf16 + channels_last"] + ([] if args.no_compile else ["bf16 + channels_last + compile"])
        COMPILE_BACKEND = "eager"
        acts, n_digits, apgd, square, jpegs, workers = ["relu", "silu"], 20, 2, 5, 8, [0, 2]
    else:
        size, batch, batches, iters, warmup = 224, args.batch, [64, 128, 256, 512], 10, 3
        settings = ["fp32", "bf16", "bf16 + channels_last"] + ([] if args.no_compile else ["bf16 + channels_last + compile"])
        acts, n_digits, apgd, square, jpegs, workers = ["relu", "silu", "gelu"], 500, 100, 1000, 1024, [4, 8, 16]
    eager = [s for s in settings if "compile" not in s]
    compiled = [s for s in settings if "compile" in s]
    torch.manual_seed(0)
    with open(csv_path, "w", newline="") as f, tempfile.TemporaryDirectory() as scratch:
        CSV = (f, csv.writer(f))
        CSV[1].writerow(["part", "setting", "value", "unit"])
        if device.type == "cuda":
            record("setup", "GPU", torch.cuda.get_device_name(device), "")
            record("setup", "cuDNN TF32 / matmul TF32 (PyTorch defaults)",
                   f"{torch.backends.cudnn.allow_tf32}/{torch.backends.cuda.matmul.allow_tf32}", "")
            torch.backends.cudnn.benchmark = True
        record("setup", "torch / torchvision", f"{torch.__version__} / {importlib.import_module('torchvision').__version__}", "")
        record("setup", "CPU cores", os.cpu_count(), "")
        if compiled and 1 in parts:
            record("setup", "torch.compile backend", COMPILE_BACKEND, "")
        # the eager settings first, then every other part, and torch.compile last: each compiled model takes a
        # minute or more to compile, so --time-limit can stop them without losing the rest. Each part is guarded:
        # an error in one is a row of the CSV, and the next part runs
        rates, fastest = {}, eager[-1]
        if 1 in parts:
            print(f"\n1. training step, ResNet-50, {size} px, batch {batch}, synthetic data on {device}")
            rates = guarded("train", part_train, device, size, batch, eager, iters, warmup) or {}
            if rates:
                fastest = max(rates, key=lambda k: rates[k][0])
                guarded("train", part_acts, device, size, batch, fastest, acts, iters, warmup, deadline,
                        batch / rates[fastest][0])   # ReLU's step in this setting: measured just above
            guarded("train", part_cifar, device, fastest, iters, warmup, batch if quick else None)
        if 2 in parts:
            guarded("batch", part_batch, device, size, batches, fastest, iters, warmup)
        if 3 in parts:
            guarded("eval", part_eval_resnet, device, size, batch, iters, warmup)
        if parts & {3, 4}:
            checkpoints = guarded("eval", digits_checkpoints, args.digits_runs, quick, device, scratch)
            guarded("eval", part_eval_digits, device, checkpoints, n_digits, apgd, square)
        per_core = guarded("loader", part_loader, device, jpegs, workers, batch, size, scratch, 0 if quick else 3) \
            if 5 in parts else None
        if 6 in parts:
            guarded("profile", part_profile, device, fastest, batch, size, os.path.dirname(os.path.abspath(csv_path)))
        summary(rates, fastest, per_core, "eager")   # written now: a compile killed by a timeout leaves them
        if 1 in parts and compiled:
            print(f"\n1c. torch.compile, ResNet-50, {size} px, batch {batch} (last: each new model compiles)")
            if time.monotonic() + COMPILE_S > deadline:
                record("train", compiled[0], f"skipped: --time-limit leaves under {COMPILE_S} s", "")
            else:
                rates.update(guarded("train", part_train, device, size, batch, compiled, iters, warmup) or {})
                if compiled[0] in rates and rates[compiled[0]][0] > rates[fastest][0]:
                    fastest = compiled[0]
                    guarded("train", part_acts, device, size, batch, fastest, acts, iters, warmup, deadline,
                            batch / rates[fastest][0], per_model_s=rates[fastest][1])
                if fastest == compiled[0]:
                    summary(rates, fastest, per_core, "with torch.compile")
        CSV = None
    print(f"\n{len(ROWS)} figures -> {os.path.relpath(csv_path)}")


if __name__ == "__main__":
    main()
