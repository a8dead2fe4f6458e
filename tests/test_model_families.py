"""Every torchvision family the paper's scaling section (and a user) reaches for: the activation swap leaves
no module of the old activation types (gates excepted), and a forward pass and a PGD step run. A model whose
activations are functional calls is refused with one line."""
import importlib

import pytest
import torch
import torch.nn as nn

import sat_cli
import sat_models

acts = importlib.import_module("01_activations")
attack = importlib.import_module("02_pgd")
GATES = (nn.Sigmoid, nn.Hardsigmoid)

FAMILIES = [   # (torchvision name, its own activation types, its gates)
    ("resnext50_32x4d", {"ReLU"}, set()),
    ("wide_resnet50_2", {"ReLU"}, set()),
    ("efficientnet_b0", {"SiLU"}, {"Sigmoid"}),
    ("convnext_tiny", {"GELU"}, set()),
    ("vit_b_16", {"GELU"}, set()),              # GELU inside torchvision's MLP blocks
    ("regnet_y_400mf", {"ReLU"}, {"Sigmoid"}),
    ("mobilenet_v3_small", {"ReLU", "Hardswish"}, {"Hardsigmoid"}),
]


def cfg(name, act, smooth_grad="none"):
    return {"dataset": "imagenet", "model": name, "num_classes": 5, "act": act, "smooth_grad": smooth_grad, "image_size": 32}


@pytest.mark.parametrize("name, native, gates", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_swap_replaces_every_activation_but_no_gate(name, native, gates):
    untouched = sat_models.torchvision_model(name, 5, 32)
    before = {type(m).__name__ for m in untouched.modules() if isinstance(m, acts.RELU_ROLE)}
    n_gates = sum(isinstance(m, GATES) for m in untouched.modules())
    assert before == native
    for act, expected in [("relu", nn.ReLU), ("silu", nn.SiLU)]:
        torch.manual_seed(0)
        model = sat_models.build_model(cfg(name, act))
        kinds = {type(m) for m in model.modules() if isinstance(m, acts.RELU_ROLE)}
        assert kinds == {expected}, f"{name} --act {act}: left {kinds}"
        assert sum(isinstance(m, GATES) for m in model.modules()) == n_gates                 # gates kept
        assert {type(m).__name__ for m in model.modules() if isinstance(m, GATES)} == gates
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 3])
    model.eval()
    x_adv = attack.pgd(model, x, y, attack.px(4), attack.px(4), 1)
    assert (x_adv - x).abs().max() <= attack.px(4) + 1e-6 and not torch.equal(x_adv, x)
    assert model(x_adv).shape == (2, 5)


def test_swap_reports_by_type_and_reaches_the_smooth_backward():
    net = sat_models.torchvision_model("mobilenet_v3_small", 5, 32)
    replaced = acts.swap_activations(net, "relu", smooth_grad=True)
    assert replaced.by_type == {"ReLU": 14, "Hardswish": 19} and len(replaced) == 33
    assert all(type(m) is acts.SmoothGradReLU for m in net.modules() if isinstance(m, acts.RELU_ROLE))
    again = acts.swap_activations(net, "gelu")      # this file's own modules are swapped too
    assert again.by_type == {"SmoothGradReLU": 33}


@pytest.mark.parametrize("name", ["densenet121", "googlenet"])
def test_functional_activations_are_refused_with_one_line(name):
    with pytest.raises(sat_cli.UserError, match=f"model '{name}' calls relu in functional form"):
        sat_models.build_model(cfg(name, "silu"))


def test_functional_check_ignores_the_activation_modules_own_calls():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), acts.make_activation("psoftplus"))
    assert sat_models.functional_activations(model, torch.rand(1, 3, 8, 8)) == set()

    class Functional(nn.Module):
        def forward(self, x):
            return torch.nn.functional.gelu(x) + x.relu()
    assert sat_models.functional_activations(Functional(), torch.rand(2)) == {"gelu", "relu"}
