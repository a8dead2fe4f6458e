"""Plumbing shared by the stages. A reader of the paper may skip all of it: nothing here is an algorithm.

One-line errors (`UserError`, `run_cli`), command-line checks, devices, seeds and random states, the job pool
of `--jobs`, atomic checkpoints, and the smoke-test switch of the command tests (`SMOKE`, `smoke_settings`).
The stages import it as `import sat_plumbing`; the `sat_` prefix keeps a user's own `common.py` or `utils.py`
from shadowing it.
"""
import argparse
import dataclasses
import math
import os
import random
import sys
import tempfile

import numpy as np
import torch

CHECKPOINT_FORMAT = "sat-teaching/1"   # written into every checkpoint; a file without it is foreign
RUNS_DIR = "runs"                      # every stage writes under here; see README "Repo map"

# Smoke-test mode, for tests/test_readme_commands.py, which runs every command of the README and of the
# stages' docstrings exactly as written, on tiny generated data, in seconds. With SAT_SMOKE=1 in the
# environment, smoke_settings() below shrinks the amount of work of each command; the commands, flags, data
# paths, checkpoints and tables are the real ones. SMOKE is read nowhere else.
# Never set it for a result: a smoke run learns nothing.
SMOKE = os.environ.get("SAT_SMOKE", "") not in ("", "0")


def smoke_settings(stage: str, settings: dict) -> dict:
    """`settings` (a stage's parsed settings, by name) as they are, or under SAT_SMOKE=1 shrunk to seconds of work:
      train      1 epoch of 2 steps of at most 4 images per process, 16-pixel ImageNet crops, a 2-image check, at
                 most 2 validation images, the first 2 seeds and the first model of a sweep, and of its
                 (activation, smooth backward) pairs the first 2 with smooth backward none and the first other one
                 (plain ReLU, Softplus and ReLU with the smooth backward for the attacker, of the whole sweep),
                 trained in this process (--jobs 1)
      eval       the first 4 test images, every PGD stopped after 1 step, 1 APGD step, 2 Square queries, --jobs 1
      benchmark  each timed function run once on at most 8 images (16 for an evaluation, PGD cut to 3 steps),
                 no warm-up, one thread, the first case only, 32-pixel images for an ImageNet model
    What a command does at full size (and that --jobs N gives the numbers of --jobs 1) is checked by the unit tests,
    not by running it large: a process pool costs each worker seconds of imports, more than the smoke work itself. Keys a stage does
    not have are left out; the other settings are returned unchanged."""
    if not SMOKE:
        return settings
    world = int(os.environ.get("WORLD_SIZE", 1))
    cut = {
        "train": {"epochs": lambda v: 1, "steps_per_epoch": lambda v: 2, "batch_size": lambda v: min(v, 4 * world),
                  "image_size": lambda v: min(v, 16), "check_size": lambda v: min(v, 2), "workers": lambda v: min(v, 1),
                  "warmup_epochs": lambda v: 0.0, "milestones": lambda v: [], "seeds": lambda v: v[:2],
                  "models": lambda v: v[:1], "jobs": lambda v: 1, "val_size": lambda v: min(v, 2),
                  "sweep": lambda v: [r for r in v if r[1] == "none"][:2] + [r for r in v if r[1] != "none"][:1]},
        "eval": {"limit": lambda v: min(v or 4, 4), "max_pgd_steps": lambda v: 1, "apgd_steps": lambda v: 1,
                 "square_queries": lambda v: 2, "jobs": lambda v: 1},
        "benchmark": {"repeats": lambda v: 1, "inner": lambda v: 1, "warmup": lambda v: 0, "batch": lambda v: min(v, 8),
                      "images": lambda v: min(v, 16), "steps": lambda v: min(v, 3), "threads": lambda v: 1,
                      "cases": lambda v: v[:1], "image_size": lambda v: min(v, 32)},
    }[stage]
    return {k: cut[k](v) if k in cut else v for k, v in settings.items()}


class UserError(Exception):
    """A mistake in the user's input: printed as one line `error: ...` and exit code 2, never a traceback."""


def run_cli(main, argv=None):
    """Call main(argv); turn a UserError into one line on stderr and exit code 2."""
    try:
        return main(argv)
    except UserError as e:
        msg = str(e).strip()
        if "Traceback" in msg:   # raised in a DataLoader worker: torch re-raises it with the worker's traceback
            msg = msg.splitlines()[-1].split("UserError: ", 1)[-1]
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad command line (unknown flag, 'abc' for a number) is one `error: ...` line
    and exit code 2 through run_cli, like every other bad input, instead of a usage block."""

    def error(self, message):
        raise UserError(message)


def check_number(flag: str, value, lo=-math.inf, hi=math.inf, lo_open=False, hint=""):
    """One UserError line unless `value` is a finite number in [lo, hi] ((lo, hi] if lo_open).
    NaN and infinity never pass: every comparison with NaN is False, so a plain `value > 0` lets it through."""
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        span = f"{'(' if lo_open else '['}{lo:g}, {hi:.10g}{')' if math.isinf(hi) else ']'}"
        raise UserError(f"{flag} must be a finite number in {span}{hint}, got {value}")
    return value


# ----------------------------------------------------------------------------------------------------
# Settings declared once: a dataclass field carries help, unit, range and accepted names; the command line
# (add_settings) and its checks (check_settings) are generated from it

def setting(default, help: str, unit: str = "", range: tuple = None, lo_open: bool = False, hint: str = "",
            choices=None, noun: str = ""):
    """A dataclass field for one setting: its default and what --help and the checks need.
    range=(lo, hi): accepted numbers (lo excluded if lo_open; a list's elements are checked each), hint: added to
    the range error; choices: the accepted names, noun: how their error names the setting (default: its flag)."""
    meta = dict(help=help, unit=unit, range=range, lo_open=lo_open, hint=hint, noun=noun,
                choices=tuple(choices) if choices is not None else None)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_settings(cls, values: dict) -> dict:
    """One UserError line for the first value (name -> value; a list's elements each) outside the range or
    the choices its field of the dataclass `cls` declares. Returns `values`."""
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    for name, value in values.items():
        m = meta.get(name, {})
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if m.get("choices") is not None and v not in m["choices"]:
                raise UserError(f"unknown {m['noun'] or flag_of(name)} {v!r}; accepted: {', '.join(m['choices'])}")
            if m.get("range") is not None:
                check_number(flag_of(name), v, *m["range"], m["lo_open"], m["hint"])
    return values


def _shown(value) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value) or "''"


def add_settings(parser, cls, presets: dict = None, skip=(), many=(), defaults: dict = None):
    """One flag --a-name per field a_name of the dataclass `cls` that has help (see setting()), except those
    in `skip`: the type from the default (a bool is a switch, a list takes several values, so do the names in
    `many`), the help from the field with its unit, range, accepted names and default: each preset's where
    `presets` (preset name -> settings) differ, the text of `defaults` (name -> text) where given. Every flag
    defaults to None, "not given", so that the preset's value applies; check_settings checks the values."""
    for f in dataclasses.fields(cls):
        m = f.metadata
        if f.name in skip or "help" not in m:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        words = [m["help"]] + ([f"unit: {m['unit']}"] if m["unit"] else [])
        if m["range"] is not None:
            lo, hi = m["range"]
            words.append(f"range {'(' if m['lo_open'] else '['}{lo:g}, {hi:.10g}{')' if math.isinf(hi) else ']'}")
        if m["choices"] is not None:
            words.append(f"one of {', '.join(m['choices'])}")
        per_preset = {p: s.get(f.name, default) for p, s in (presets or {}).items()}
        if (defaults or {}).get(f.name):
            words.append(f"default: {defaults[f.name]}")
        elif len({repr(v) for v in per_preset.values()}) > 1:
            words.append("default: the preset's: " + ", ".join(f"{p} {_shown(v)}" for p, v in per_preset.items()))
        else:
            words.append(f"default: {_shown(default)}")
        kw = dict(default=None, help="; ".join(words).replace("%", "%%"))
        if isinstance(default, bool):
            kw["action"] = "store_true"
        elif isinstance(default, list) or f.name in many:
            element = type(default[0]) if isinstance(default, list) and default else type(default)
            kw.update(type=element, nargs="*" if isinstance(default, list) else "+")
        else:
            kw["type"] = type(default)
        parser.add_argument(flag_of(f.name), **kw)
    return parser


def check_out_dir(path: str, flag: str = "--out") -> str:
    """Create the output folder if needed and check that a file can be written there; one UserError line
    otherwise (the path is a file, lies below a file, or is on a read-only or full disk)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as e:
        raise UserError(f"{flag} {path!r} cannot be used as an output folder ({e.strerror or e}); give a writable folder")
    return path


# ----------------------------------------------------------------------------------------------------
# Devices and seeds

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


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)   # seeds CUDA too


def rng_state() -> dict:
    """Random states to store in a checkpoint (tensors and ints only, so weights_only=True can load them)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------
# Checkpoints: one dict per run, written atomically, read back with weights_only=True

TMP_PREFIX = ".tmp_"   # save_checkpoint's temporary files, renamed over the checkpoint once complete

def save_checkpoint(state: dict, path: str):
    """Write to a temporary file in the same folder, fsync, then rename over `path`. A kill at any moment
    leaves either the old complete file or the new complete file, never a half-written one."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=".pt")
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):   # disk full, folder gone, quota, ...: the previous file is untouched
            raise UserError(f"could not write checkpoint {path!r} ({e.strerror or e}); the previous checkpoint there, if any, is kept")
        raise


def remove_stale_temporaries(folder: str):
    """Delete what a process killed in the middle of save_checkpoint left behind (its temporary file)."""
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.startswith(TMP_PREFIX):
            os.remove(os.path.join(folder, name))


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Read a checkpoint with weights_only=True (no arbitrary code runs). A missing, truncated, tampered
    or foreign file is one UserError line."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:   # truncated zip, unpickling of a forbidden global, garbage bytes, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"checkpoint {path!r} is unreadable (truncated, tampered or not a torch file): {e.__class__.__name__}: {msg[:160]}")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt or "config" not in ckpt:
        raise UserError(f"checkpoint {path!r} is not one of this repo's (format {CHECKPOINT_FORMAT!r} with model and config expected)")
    return ckpt
