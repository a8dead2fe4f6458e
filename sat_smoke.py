"""The smoke-test switch of the command tests: a reader of the paper may skip it; nothing here is an algorithm.
The stages never read it: their harness (sat_training_run, sat_eval_run) and the benchmarks apply smoke_settings.
"""
import os

import sat_processes

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
    world = sat_processes.world()[1]
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
