"""Stage 04's sharding, resume and progress. A reader of the paper may skip all of it: the protocol is in 04_eval.py.

How one checkpoint's test images are cut up, shared out, saved and shown:
  blocks    the evaluated images, in order, cut into fixed blocks of `block` images by index (block b holds the
            images b*block ... (b+1)*block - 1). A block is the unit of work and of the attacks' randomness (04
            seeds each block's attacks by (seed, b) and each image's PGD start by (seed, image index)), so the
            process count and --batch-size change no result.
  shards    under `torchrun --nproc_per_node N`, process r of N takes blocks r, r+N, r+2N, ... (gloo on the CPU,
            NCCL on GPUs, one GPU per process: sat_processes.start); the per-image results are gathered on rank 0,
            which alone prints and writes files.
  parts     each finished block is written atomically (sat_files.write_json) as
            <folder>/block-NNNNNN.json; a killed evaluation run again with the same command skips the blocks
            already there, whatever its process count. The folder's name holds the cache key, so parts made
            with other settings are never mixed in.
  progress  one tqdm bar per checkpoint on stderr (images/s, ETA); after the first block, one line with the
            estimated time for the checkpoint.
"""
import hashlib
import json
import os
import shutil
import sys
import time

import torch

from sat_files import read_json, write_json
from sat_processes import gather, world


def key_hash(key):
    """A short hash of a cache key: the name of the folder of a checkpoint's parts."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# ---- one checkpoint's images: blocks, shards, parts, progress --------------------------------------------------

def bits(mask):
    """A bool tensor as a '0'/'1' string (JSON-friendly and readable)."""
    return "".join("1" if b else "0" for b in mask.tolist())


def unbits(s):
    return torch.tensor([c == "1" for c in s], dtype=torch.bool)


class Blocks:
    """The blocks of one checkpoint's n images, this process's share of them, and the parts already saved."""

    def __init__(self, n, block, parts_dir, desc="", position=0):
        self.n, self.block, self.parts_dir, self.desc, self.position = n, block, parts_dir, desc, position
        self.count = (n + block - 1) // block
        rank, size, _ = world()
        self.mine = list(range(rank, self.count, size))
        self.rank = rank

    def part(self, b):
        return os.path.join(self.parts_dir, f"block-{b:06d}.json")

    def done(self, b):
        return read_json(self.part(b)) is not None

    def span(self, b):
        return b * self.block, min((b + 1) * self.block, self.n)

    def todo(self, dataset, workers=0):
        """Yields (block index, index of its first image, x, y) for this process's blocks not saved yet, with a
        progress bar on rank 0 and, after the first block, an estimate of the time left."""
        from tqdm import tqdm
        todo = [b for b in self.mine if not self.done(b)]
        idx = [i for b in todo for i in range(*self.span(b))]
        left = len(idx)
        mine_total = sum(len(range(*self.span(b))) for b in self.mine)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, idx), batch_size=self.block,
                                             num_workers=workers)
        bar = tqdm(total=mine_total, initial=mine_total - left, desc=self.desc, unit="img", leave=False,
                   disable=self.rank != 0 or not left, position=self.position, file=sys.stderr, dynamic_ncols=True)
        t0, blocks = time.time(), iter(todo)
        # a block is whole unless it is the last one, so the loader's batches are exactly the blocks, in order
        for k, (x, y) in enumerate(loader):
            b = next(blocks)
            yield b, self.span(b)[0], x, y
            bar.update(len(y))
            if k == 0 and self.rank == 0 and left > len(y):
                rate = len(y) / (time.time() - t0)
                bar.write(f"{self.desc}: {rate:.3g} images/s on its first block: about {left / rate:.0f} s for this "
                          f"checkpoint's {left} images" + (" on this process" if world()[1] > 1 else ""), file=sys.stderr)
        bar.close()

    def save(self, b, masks):
        """Block b's per-image masks {attack: bool tensor}, written atomically."""
        write_json(self.part(b), {"block": b, "masks": {k: bits(v) for k, v in masks.items()}})

    def gather(self):
        """Every block's masks, concatenated in image order, {attack: bool tensor (n,)}, on rank 0 (None on the
        other ranks). Each process reads its own parts and sends them; rank 0 joins them."""
        mine = {b: read_json(self.part(b))["masks"] for b in self.mine}
        pieces = {}
        for got in gather(mine):
            pieces.update({int(b): m for b, m in got.items()})
        if self.rank != 0:
            return None
        keys = pieces[0].keys()
        return {k: torch.cat([unbits(pieces[b][k]) for b in range(self.count)]) for k in keys}

    def remove_parts(self):
        if self.rank == 0:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
