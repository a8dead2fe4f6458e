"""Files that survive a kill: a reader of the paper may skip all of it; nothing here is an algorithm.

Everything the stages write goes under RUNS_DIR. `atomic_write` is the one way a file that a restart reads back is
written (checkpoints, log.csv, stage 04's cache and its per-block parts): into a temporary file beside it, then
renamed over it, so that a kill at any moment leaves the old complete file or the new one, never half of one.
Checkpoints are one dict per run, read back with weights_only=True.
"""
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager

import torch

from sat_cli import UserError

CHECKPOINT_FORMAT = "sat-teaching/1"   # written into every checkpoint; a file without it is foreign
RUNS_DIR = "runs"                      # every stage writes under here; see README "Repo map"
TMP_PREFIX = ".tmp_"                   # atomic_write's temporary files, renamed over their file once complete


@contextmanager
def atomic_write(path: str, mode: str = "w", **open_kw):
    """`with atomic_write(path) as f: ...` writes to a temporary file in `path`'s folder (made if missing), flushed
    to the disk (fsync), then renamed over `path`. A kill at any moment leaves either the old complete file or the
    new complete one, never a half-written one; an exception inside the block removes the temporary file and leaves
    `path` as it was. A process killed before the rename leaves its temporary file (remove_stale_temporaries)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_stale_temporaries(folder: str):
    """Delete what a process killed in the middle of an atomic_write left behind in `folder` (its temporary file)."""
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.startswith(TMP_PREFIX):
            os.remove(os.path.join(folder, name))


# ---- checkpoints: one dict per run ---------------------------------------------------------------------------

def save_checkpoint(state: dict, path: str):
    """`state` (with this repo's format mark) written atomically to `path`; a failed write (disk full, folder gone,
    quota, ...) is one UserError line and leaves the previous checkpoint there untouched."""
    try:
        with atomic_write(path, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
    except OSError as e:
        raise UserError(f"could not write checkpoint {path!r} ({e.strerror or e}); the previous checkpoint there, if any, is kept")


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


# ---- JSON files and content hashes (stage 04's cache) ---------------------------------------------------------

def write_json(path, obj):
    """Write obj to path atomically: readers see the old file or the whole new one, never a part."""
    with atomic_write(path) as f:
        json.dump(obj, f)


def read_json(path):
    """The JSON object in `path`, or None where there is none (missing or unreadable)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def file_sha256(path, chunk=1 << 22):
    """A file's content hash: a copy or a re-save of a checkpoint with the same weights keeps its cached results, a
    retrained run at the same path does not."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)
