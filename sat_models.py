"""The models: every one is Sequential(Normalize, network), so attacks see pixels in [0, 1] (STYLE rule 4).

  digitsnet       a small residual CNN for 8x8 digits (19.7k parameters at width 16)
  fashionnet      the same network with a stride-2 stem, for 28x28 Fashion-MNIST
  cifar_resnet18  torchvision's ResNet-18 with the usual CIFAR stem
  any torchvision classification model by name (resnet50, resnet101, resnext50_32x4d, efficientnet_b0, ...)
build_model(config) rebuilds a run's model from its checkpoint's config, activations swapped by stage 01.
"""
import importlib

import torch
import torch.nn as nn

from sat_data import STATS
from sat_cli import UserError
from sat_files import load_checkpoint

class Normalize(nn.Module):
    """(x - mean) / std per channel, as the model's first layer (STYLE rule 4)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class ResBlock(nn.Module):
    """conv-BN-act-conv-BN + shortcut, then act (the basic ResNet block). Activations are nn.ReLU here and
    replaced by 01's swap_activations, exactly as one would do to a torchvision model."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act2 = nn.ReLU()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class DigitsNet(nn.Module):
    """Small residual CNN for 8x8 digits: stem conv (w) -> block (w) -> block (2w, stride 2) -> pool -> fc.
    width w = 16 has 19.7k parameters; `--width` scales it (notebook 5's scaling experiment).
    stem_stride=2 is the Fashion-MNIST model ('fashionnet'): the same weights, but the stem halves 28x28 to
    14x14 before the blocks, so a 28x28 image costs ~3x an 8x8 one instead of ~12x (60,000 of them per epoch)."""

    def __init__(self, width=16, num_classes=10, stem_stride=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = ResBlock(width, width)
        self.block2 = ResBlock(width, 2 * width, stride=2)   # 8x8 -> 4x4 (Fashion-MNIST: 14x14 -> 7x7)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):   # x: (B, 1, 8, 8); fashionnet: (B, 1, 28, 28)
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


def cifar_resnet18(num_classes=10):
    """torchvision's ResNet-18 with the usual CIFAR stem: 3x3 stride-1 first conv and no max-pool."""
    import torchvision
    m = torchvision.models.resnet18(num_classes=num_classes)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


OWN_MODELS = {"digitsnet": "digits", "fashionnet": "fashionmnist", "cifar_resnet18": "cifar10"}   # this repo's models and their data set
ONE_CHANNEL = {"digits": "digitsnet", "fashionmnist": "fashionnet"}   # grey data sets and the model that fits each


def check_model_name(name: str, dataset: str) -> str:
    """Return `name` if it is one of this repo's models fitting `dataset`, or a torchvision classification
    model; else raise one UserError line. torchvision is imported only for a name that is not this repo's
    own (importing it costs 1.6 s of CPU, more than a whole smoke-test run of the digits model)."""
    if name in OWN_MODELS:
        if OWN_MODELS[name] != dataset:
            raise UserError(f"model {name!r} does not fit dataset {dataset!r}")
        return name
    import torchvision
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UserError(f"unknown model {name!r}; accepted: {', '.join(OWN_MODELS)}, or a torchvision classification model such as resnet50, resnet101, resnet152, resnext50_32x4d")
    elif dataset in ONE_CHANNEL:   # torchvision models expect 3-channel images; digits and Fashion-MNIST have 1
        raise UserError(f"model {name!r} does not fit dataset {dataset!r} (1 channel); use {ONE_CHANNEL[dataset]}")
    return name


def usual_image_size(name: str, default: int = 224) -> int:
    """The resolution a torchvision model is usually trained at: the crop size of its pretrained weights'
    evaluation transform (EfficientNet-B3: 300, B7: 600; ResNets, ViT-B/16: 224), read from torchvision's
    metadata, which downloads nothing. `default` for a model without pretrained weights."""
    import torchvision
    try:
        return int(torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0])
    except (ValueError, KeyError, AttributeError, TypeError):
        return default


def torchvision_model(name: str, num_classes: int, image_size: int = 224):
    """Any torchvision classification model by name, untrained (resnet50, resnet101, resnext50_32x4d, ...).
    ResNets get zero-initialised last BN gamma in each block, as in the paper's recipe."""
    import torchvision
    check_model_name(name, "imagenet")
    kw = {"zero_init_residual": True} if ("resnet" in name or "resnext" in name) else {}
    if name.startswith("vit_"):   # a ViT is built for one input size (its position embeddings)
        kw["image_size"] = image_size
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kw)


# the functional forms of stage 01's RELU_ROLE (torch.nn.functional.relu, torch.relu, Tensor.relu, ...), by name
FUNCTIONAL_NAMES = {"relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "prelu", "elu", "elu_", "celu", "selu",
                    "gelu", "silu", "mish", "softplus", "hardswish"}


def functional_activations(model: nn.Module, x: torch.Tensor) -> set:
    """Names of the activation functions `model` calls in functional form (F.relu(x), x.relu(), ...) in a
    forward pass on x, outside its activation modules: the calls stage 01's swap_activations cannot reach
    (torchvision's DenseNet ends with F.relu, Inception v3 and GoogLeNet use nothing else). Seen through a
    TorchFunctionMode, which is shown every torch function call; calls made inside a RELU_ROLE module (an
    nn.ReLU calls F.relu) are its own business."""
    from torch.overrides import TorchFunctionMode
    depth, found = [0], set()

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if depth[0] == 0 and getattr(func, "__name__", "") in FUNCTIONAL_NAMES:
                found.add(func.__name__)
            return func(*args, **(kwargs or {}))

    def enter(*_):
        depth[0] += 1

    def leave(*_):
        depth[0] -= 1
    relu_role = importlib.import_module("01_activations").RELU_ROLE
    hooks = [h for m in model.modules() if isinstance(m, relu_role)
             for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    was_training = model.training
    try:
        with torch.no_grad(), Watch():
            model.eval()(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found


def build_model(cfg: dict) -> nn.Module:
    """Rebuild a model from a (resolved) config dict: keys dataset, model, act, smooth_grad, width,
    num_classes. Returns Sequential(Normalize, net) with its ReLUs swapped for cfg['act'] (stage 01)."""
    import importlib
    acts = importlib.import_module("01_activations")
    name = cfg["model"]
    if name in ("digitsnet", "fashionnet"):
        net = DigitsNet(cfg.get("width", 16), cfg["num_classes"], stem_stride=2 if name == "fashionnet" else 1)
    elif name == "cifar_resnet18":
        net = cifar_resnet18(cfg["num_classes"])
    else:
        net = torchvision_model(name, cfg["num_classes"], cfg.get("image_size", 224))
    use_smooth_grad = cfg.get("smooth_grad", "none") != "none"
    replaced = acts.swap_activations(net, cfg["act"], smooth_grad=use_smooth_grad)
    if name not in OWN_MODELS:   # a torchvision model: are all its activations modules that could be swapped?
        size = cfg.get("image_size", 224) if cfg["dataset"] == "imagenet" else 32
        calls = functional_activations(net, torch.rand(1, 3, size, size))
        if calls or not replaced:
            raise UserError(f"model {name!r} calls {', '.join(sorted(calls)) or 'its activations'} in functional form "
                            f"(torch.nn.functional), which no module swap can reach: SAT cannot change it; pick another model")
    mean, std = STATS[cfg["dataset"]]
    return nn.Sequential(Normalize(mean, std), net)


def model_from_checkpoint(path: str, device="cpu"):
    """(model in eval mode on device, checkpoint dict)."""
    ckpt = load_checkpoint(path)
    with torch.device("meta"):   # built without memory or random init (ResNet-152: 0.3 s instead of 1.4 s) ...
        model = build_model(ckpt["config"])
    try:   # ... and given the checkpoint's own tensors
        model.load_state_dict(ckpt["model"], assign=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint {path!r} does not fit its own config: {str(e).splitlines()[0]}")
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):   # a tensor the checkpoint does not hold
        model = build_model(ckpt["config"])
        model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
