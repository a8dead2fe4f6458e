"""Stage 04 sharded over processes: images/s of one process against two (torchrun, gloo), and what the attack set costs.

  a. images/s of stage 04's whole attack set (04_eval.block_masks on each block, sat_shards' split of the blocks
     over the processes, the per-image results gathered on rank 0), one process with one torch thread against
     two processes with one thread each (torchrun --nproc_per_node 2, gloo), for
       digits     the trained seed-0 ReLU checkpoint (runs/03_adv_train/digits_relu_s0; untrained if absent),
                  its first 400 test images, stage 04's default attack settings, blocks of 100
       cifar10    an untrained CIFAR ResNet-18 on 40 random 32x32 images labelled with its own predictions
                  (so every image starts correct), eps 8/255, blocks of 10, APGD 20 steps, Square 100 queries
     Prints both rates and their ratio (target >= 1.8x on two cores).
  b. the attack set in forward-backward passes per image (an upper bound: every image robust to every attack;
     stage 04's early stopping only lowers it), one pass's measured cost per image for ResNet-50 at 224 px, and
     the derived time of the full attack set per ImageNet checkpoint on 50,000 and on 5,000 images.

Run it:
    python benchmarks/bench_eval_scaling.py      # ~3 min on 2 CPU cores; needs both cores idle to mean anything
Other processes on the same cores lower the two-process rate first: check `uptime` and rerun when it is quiet.
"""
import argparse
import importlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import sat_data  # noqa: E402
import sat_eval_run  # noqa: E402
import sat_models  # noqa: E402
import sat_processes  # noqa: E402
import sat_shards  # noqa: E402
import sat_smoke  # noqa: E402

ev = importlib.import_module("04_eval")
CASES = {"digits": dict(n=400, block=100, eps=64 / 255, settings=dict(apgd_steps=ev.APGD_STEPS, square_queries=ev.SQUARE_QUERIES)),
         "cifar10": dict(n=40, block=10, eps=8 / 255, settings=dict(apgd_steps=20, square_queries=100))}


def shrunk(case):
    """The case's images and attack settings (under SAT_SMOKE=1, the command tests', a few images and steps)."""
    c = CASES[case]
    return sat_smoke.smoke_settings("eval", {"limit": c["n"], "max_pgd_steps": None, **c["settings"]})


def model_and_images(case):
    torch.manual_seed(0)
    if case == "digits":
        path = os.path.join(ROOT, "runs", "03_adv_train", "digits_relu_s0", "final.pt")
        model = sat_models.model_from_checkpoint(path)[0] if os.path.isfile(path) else \
            sat_models.build_model({"dataset": "digits", "model": "digitsnet", "width": 16, "num_classes": 10, "act": "relu",
                                    "smooth_grad": "none", "image_size": 8})
        x, y = sat_data.digits_tensors("test")
        n = shrunk(case)["limit"]
        return model.eval(), x[:n], y[:n]
    model = sat_models.build_model({"dataset": "cifar10", "model": "cifar_resnet18", "num_classes": 10, "act": "relu",
                                    "smooth_grad": "none", "image_size": 32}).eval()
    x = torch.rand(shrunk(case)["limit"], 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def worker(case):
    """Under torchrun: this process's blocks of the case, timed from a barrier to the gathered results."""
    torch.set_num_threads(1)
    sat_processes.start(torch.device("cpu"))
    c = CASES[case]
    model, x, y = model_and_images(case)
    s = sat_eval_run.attack_settings(**{"autoattack": False, "square_queries": ev.SQUARE_QUERIES, "apgd_steps": ev.APGD_STEPS,
                                        "seed": 0, "block": c["block"], **{k: v for k, v in shrunk(case).items() if k != "limit"}})
    smooth = ev.smooth_backward_copy(model)
    rank, world, _ = sat_processes.world()
    sat_processes.gather(None)   # a barrier: every process starts the clock together
    t = time.perf_counter()
    mine = {}
    for b in range(rank, (len(y) + c["block"] - 1) // c["block"], world):
        lo = b * c["block"]
        masks = ev.block_masks(model, x[lo:lo + c["block"]], y[lo:lo + c["block"]], lo, b, c["eps"], 10, s, smooth)
        mine[b] = {k: sat_shards.bits(v) for k, v in masks.items()}
    got = sat_processes.gather(mine)
    sec = time.perf_counter() - t
    if rank == 0:
        assert sum(len(g) for g in got) == (len(y) + c["block"] - 1) // c["block"]
        print(json.dumps({"images_per_s": len(y) / sec, "sec": sec}))
    sat_processes.stop()


def launch(case, procs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
                        os.path.abspath(__file__), "--worker", case], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stdout[-2000:] + r.stderr[-2000:])
    return json.loads([line for line in r.stdout.splitlines() if line.startswith("{")][-1])


def passes_per_image(apgd=ev.APGD_STEPS, square=ev.SQUARE_QUERIES):
    """(forward-backward passes, forward-only passes) per image of stage 04's default set on a ReLU model, if every
    image survived every attack to its last step (early stopping only lowers it)."""
    fb = 1 + sum(ev.PGD_STEPS) + 200 + (2 + 9) * apgd + 20 * len(ev.EPS_FACTORS)   # FGSM, PGD-k, PGD-sg, APGD-CE/DLR,
    #                                                                             APGD-T (9 targets), eps curve
    return fb, square + 1 + len(ev.PGD_STEPS) + 1 + len(ev.EPS_FACTORS)        # Square's queries, each PGD's last check


def pass_costs(batch=8, image_size=224):
    """Seconds per image of one forward-backward (w.r.t. the input) and of one forward, ResNet-50, one thread."""
    import torchvision
    torch.set_num_threads(1)
    model = torchvision.models.resnet50().eval()
    x = torch.rand(batch, 3, image_size, image_size, requires_grad=True)
    fb, fw = [], []
    for _ in range(sat_smoke.smoke_settings("benchmark", {"repeats": 3})["repeats"]):
        t = time.perf_counter()
        torch.autograd.grad(model(x).sum(), x)
        fb.append((time.perf_counter() - t) / batch)
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        fw.append((time.perf_counter() - t) / batch)
    return min(fb), min(fw)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores; above ~0.5, other work shares them)")
    print(f"{'case':<9} {'1 process (img/s)':>18} {'2 processes (img/s)':>20} {'ratio':>6}")
    for case in sat_smoke.smoke_settings("benchmark", {"cases": list(CASES)})["cases"]:
        one, two = launch(case, 1), launch(case, 2)
        print(f"{case:<9} {one['images_per_s']:>18.2f} {two['images_per_s']:>20.2f} "
              f"{two['images_per_s'] / one['images_per_s']:>5.2f}x", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    fb, fw = passes_per_image()
    size = sat_smoke.smoke_settings("benchmark", {"batch": 8, "image_size": 224})
    c_fb, c_fw = pass_costs(**size)
    per_image = fb * c_fb + fw * c_fw
    print(f"\nstage 04's default set, ReLU model, every image robust to the end: {fb} forward-backward + {fw} forward passes "
          f"per image (upper bound)\nResNet-50, {size['image_size']} px, CPU, one thread: {1000 * c_fb:.0f} ms per image forward-backward, "
          f"{1000 * c_fw:.0f} ms forward -> {per_image:.0f} s per image")
    for n in (50_000, 5_000):
        print(f"  {n:>6} images: {per_image * n / 3600:,.0f} CPU-thread hours per checkpoint (at most)")


if __name__ == "__main__":
    main()
