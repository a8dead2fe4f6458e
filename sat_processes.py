"""Where the work runs: a reader of the paper may skip all of it; nothing here is an algorithm.

The device (`pick_device`: CUDA if present, chosen at run time), the job pool of `--jobs` (`in_processes`: one
process and one torch thread per job), and torchrun's processes: `world()`, the one reader of this process's rank,
and the process group of an evaluation sharded over them (`start`, `stop`, `gather`, `broadcast`).
"""
import os
import sys

import torch

from sat_cli import UserError, check_number


def cpu_count() -> int:
    """Cores this process may use (a container or taskset may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS, Windows
        return os.cpu_count() or 1


def check_jobs(jobs, default: int) -> int:
    """--jobs N: None -> default; else a whole number >= 1 (one line otherwise)."""
    if jobs is None:
        return default
    check_number("--jobs", jobs, 1, 4096, hint=" (processes working at once)")
    return jobs


def in_processes(fn, items, jobs: int):
    """fn(item) for every item, `jobs` processes at a time, each with ONE torch thread; yields (index, result)
    as each finishes. Why processes and one thread each: a small model cannot use two cores in one step, and two
    torch threads per process spin-wait on each other when the other core is busy (a 10x slow-down measured
    here), while two one-thread processes each keep a core busy. 'spawn' starts each worker as a fresh Python
    (fork after torch has started threads can hang). An exception in fn (a UserError, say) reaches the caller.
    fn must be a module-level function; fn and items must pickle. jobs=1 runs them here, in this process, set to
    one thread too, so that --jobs 1 and --jobs N agree to the last bit."""
    import concurrent.futures
    import multiprocessing
    if jobs == 1:
        torch.set_num_threads(1)
        yield from ((i, fn(item)) for i, item in enumerate(items))
        return
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_start) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for fut in concurrent.futures.as_completed(futures):
                yield futures[fut], fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _worker_start():
    """A --jobs worker's set-up: one torch thread, and (Linux) death with its parent. Without the second, a parent
    killed by a signal it cannot catch (kill -9, or kill of the parent alone) left its workers running their job
    and the jobs already queued to them, writing into run folders that a restarted command then also trained."""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:   # the parent died before prctl: leave now
            os._exit(1)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA if present, else CPU. Chosen at run time: nothing touches a GPU at import."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    if not (name == "cpu" or name.startswith("cuda")):
        raise UserError(f"unknown --device {name!r}; accepted: auto, cpu, cuda, cuda:N")
    return torch.device(name)


# ---- torchrun's processes ------------------------------------------------------------------------------------

def world():
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) for a plain `python` run. The one place
    that reads them."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def start(device):
    """Join torchrun's process group, if any: gloo on the CPU, NCCL on CUDA (this process's GPU: LOCAL_RANK).
    Returns the device this process uses."""
    rank, size, local_rank = world()
    if size == 1:
        return device
    import torch.distributed as dist
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop():
    if world()[1] > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def gather(obj):
    """Every process's obj, in rank order, on every process (one process: [obj])."""
    if world()[1] == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's obj on every process."""
    if world()[1] == 1:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
