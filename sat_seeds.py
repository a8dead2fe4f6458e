"""Seeds and random states: a reader of the paper may skip it. `seed_everything` at the start of a run; the random
states a checkpoint stores (`rng_state`) so that a resumed run draws what an uninterrupted one would.
"""
import random

import numpy as np
import torch


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
