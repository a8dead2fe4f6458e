"""Make the numbered stages importable (their file names start with a digit, so via importlib)."""
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


def stage(name):
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def acts():
    return stage("01_activations")


@pytest.fixture(scope="session")
def attack():
    return stage("02_pgd")


@pytest.fixture(scope="session")
def train_mod():
    return stage("03_adv_train")


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory, train_mod):
    """A small adversarially trained digits model (PGD-1, eps 32/255, 8 epochs, ~4 s), for attack tests."""
    import sat_models
    out = tmp_path_factory.mktemp("trained") / "digits_relu"
    cfg = train_mod.preset_config("digits", act="relu", epochs=8, milestones=[6], out=str(out))
    path = train_mod.train(cfg, quiet=True)
    model, _ = sat_models.model_from_checkpoint(path)
    return model, path
