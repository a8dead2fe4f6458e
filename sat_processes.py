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
    import signal
    import threading
    if jobs == 1:
        torch.set_num_threads(1)
        yield from ((i, fn(item)) for i, item in enumerate(items))
        return
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()   # set on Ctrl-C: a worker starts no job after it
    # the workers are started (by submit) with Ctrl-C ignored, so that one pressed while they import torch prints
    # no traceback; _worker_start gives them their handler (a Ctrl-C in this short window is lost)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_start, initargs=(stop,))
        futures = {pool.submit(_job, fn, item): i for i, item in enumerate(items)}
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    with pool:
        try:
            for fut in concurrent.futures.as_completed(futures):
                yield futures[fut], fut.result()
        except BaseException as e:
            for fut in futures:
                fut.cancel()
            if isinstance(e, KeyboardInterrupt):   # Ctrl-C: every worker stops its job (a terminal signals them all
                stop.set()                         # too; `kill -INT` or a launcher may signal this process alone)
                for process in list(getattr(pool, "_processes", {}).values()):
                    try:
                        os.kill(process.pid, signal.SIGINT)
                    except (ProcessLookupError, TypeError):
                        pass
            raise


# Ctrl-C in a --jobs worker stops the job it is in (a KeyboardInterrupt there, as in the parent; checkpoint writes
# are atomic, so none is torn), and the worker starts none of those already queued to it. Only the first Ctrl-C
# raises: a second one during the first's clean-up would interrupt it.
_interrupted, _in_job, _stop = False, False, None


def _on_ctrl_c(signum, frame):
    global _interrupted
    first = not _interrupted
    _interrupted = True
    if first and _in_job:   # between jobs the worker waits in concurrent.futures' loop, where it would print a traceback
        raise KeyboardInterrupt


def _job(fn, item):
    global _in_job
    _in_job = True   # first: a Ctrl-C from here on raises, one before it is seen by the check below
    try:
        if _interrupted or (_stop is not None and _stop.is_set()):
            raise KeyboardInterrupt
        return fn(item)
    finally:
        _in_job = False


def _worker_start(stop=None):
    """A --jobs worker's set-up: one torch thread, Ctrl-C stopping its job (`_on_ctrl_c`; `stop`: the parent's
    Event), and (Linux) death with its parent. Without the last, a parent killed by a signal it cannot catch
    (kill -9, or kill of the parent alone) left its workers running their job and the jobs already queued to
    them, writing into run folders that a restarted command then also trained."""
    global _stop
    import signal
    _stop = stop
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, _on_ctrl_c)
    if sys.platform.startswith("linux"):
        import ctypes
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
