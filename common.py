"""Plumbing shared by the numbered stages: data, models, checkpoints, devices, one-line errors.

Nothing here is an algorithm of the paper (those live in 01-04); it is what every stage needs to read the
same data, rebuild the same model and read the same checkpoint. Stages import it as `import common`.

Data sets (all pixels in [0, 1]; normalisation is the model's first layer, so an attack's eps is a scalar):
  digits    scikit-learn's bundled 8x8 handwritten digits (1797 images, 1 channel, ships with the package).
            Fixed split: a permutation drawn with numpy seed 0; the first 1297 images train, the last 500 test.
  cifar10   torchvision's CIFAR-10 (32x32 RGB). Downloads into --data on a user's machine, or reads the
            existing `cifar-10-batches-py/` folder there.
  fashionmnist  Zalando's Fashion-MNIST (28x28 grey, 60,000 train / 10,000 test, 10 classes of clothing), read
            from its four original idx .gz files in --data (or in --data/FashionMNIST/raw/, where
            torchvision's FashionMNIST downloads them with --download). Debian/Ubuntu: `apt-get install
            dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist.
  imagenet  an ImageFolder tree: <--data>/train/<class>/*.JPEG and <--data>/val/<class>/*.JPEG.
"""
import argparse
import dataclasses
import gzip
import math
import os
import random
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn

CHECKPOINT_FORMAT = "sat-teaching/1"   # written into every checkpoint; a file without it is foreign
RUNS_DIR = "runs"                      # every stage writes under here; see README "Repo map"

# Smoke-test mode, for tests/test_readme_commands.py, which runs every command of the README and of the
# stages' docstrings exactly as written, on tiny generated data, in seconds. With SAT_SMOKE=1 in the
# environment, every training run (stage 03) is cut to 1 epoch of at most 2 steps on tiny batches and
# 32-pixel ImageNet crops, a sweep to its first two seeds, and every evaluation (stage 04) to a few images
# and a few attack steps. The commands, flags, data paths, checkpoints and tables are the real ones; only
# the amount of work shrinks.
# Never set it for a result: a smoke run learns nothing.
SMOKE = os.environ.get("SAT_SMOKE", "") not in ("", "0")


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
                                                initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for fut in concurrent.futures.as_completed(futures):
                yield futures[fut], fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


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
# Data

DATASETS = ("digits", "cifar10", "fashionmnist", "imagenet")
# per-channel mean/std used by the model's Normalize layer
STATS = {
    "digits": ((0.30,), (0.40,)),   # measured on the digits train split (rounded)
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "fashionmnist": ((0.286,), (0.353,)),   # measured on the 60,000 training images (rounded)
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NUM_CLASSES = {"digits": 10, "cifar10": 10, "fashionmnist": 10}
DIGITS_N_TRAIN = 1297   # the remaining 500 of the 1797 digits are the test split


def digits_tensors(split: str):
    """(x, y) for 'train' or 'test': x (N, 1, 8, 8) float32 in [0, 1] (raw values 0..16 divided by 16)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)   # (1797, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.from_numpy(np.random.RandomState(0).permutation(len(y)))
    idx = perm[:DIGITS_N_TRAIN] if split == "train" else perm[DIGITS_N_TRAIN:]
    return x[idx], y[idx]


# Fashion-MNIST's four files, as Zalando distributes them (and torchvision and Debian keep them): per split,
# images (idx3: magic 2051, count, 28, 28, then uint8 pixels) and labels (idx1: magic 2049, count, then uint8)
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fashion_mnist_folder(data_dir: str, download: bool = False) -> str:
    """The folder holding the four .gz files: data_dir itself (e.g. /usr/share/datasets/fashion-mnist, read
    only) or data_dir/FashionMNIST/raw (torchvision's layout). With download=True and neither complete,
    torchvision's FashionMNIST downloads them into the latter (it skips files already there)."""
    names = [f for pair in FASHION_FILES.values() for f in pair]
    candidates = [data_dir, os.path.join(data_dir, "FashionMNIST", "raw")]
    for folder in candidates:
        if all(os.path.isfile(os.path.join(folder, f)) for f in names):
            return folder
    if download:
        import torchvision
        try:
            torchvision.datasets.FashionMNIST(data_dir, train=True, download=True)
        except (RuntimeError, OSError) as e:   # no network, a mirror down, a bad md5
            raise UserError(f"Fashion-MNIST download into {candidates[1]!r} failed ({e.__class__.__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                            f"offline, point --data at a folder holding its four .gz files (`apt-get install dataset-fashion-mnist`: /usr/share/datasets/fashion-mnist)")
        return candidates[1]
    raise UserError(f"no Fashion-MNIST in {data_dir!r} (nor in its FashionMNIST/raw/): it needs {', '.join(names)}; "
                    f"`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist, or pass --download")


def read_idx_gz(path: str, magic: int) -> np.ndarray:
    """One idx file (gzip-compressed): big-endian int32 magic number, one int32 per dimension, then uint8 data.
    A truncated or foreign file is one UserError line naming it."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:   # not gzip, truncated
        raise UserError(f"{path!r} cannot be read ({e.__class__.__name__}: {e}); replace it with the original file")
    ndim = magic - 2048                                     # 2049: labels (1 dim), 2051: images (3 dims)
    head = np.frombuffer(raw[:4 + 4 * ndim], dtype=">i4") if len(raw) >= 4 + 4 * ndim else np.zeros(0)
    shape = tuple(int(d) for d in head[1:])
    if len(head) != 1 + ndim or head[0] != magic or len(raw) != 4 + 4 * ndim + int(np.prod(shape)):
        raise UserError(f"{path!r} is not an idx file with magic number {magic} and its full data (truncated or foreign); replace it with the original file")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_tensors(split: str, data_dir: str, download: bool = False):
    """(x, y) for 'train' or 'test': x (N, 1, 28, 28) float32 in [0, 1] (pixels 0..255 divided by 255), y (N,)."""
    folder = fashion_mnist_folder(data_dir, download)
    images_file, labels_file = (os.path.join(folder, f) for f in FASHION_FILES[split])
    images, labels = read_idx_gz(images_file, 2051), read_idx_gz(labels_file, 2049)
    if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max(initial=0) > 9:
        raise UserError(f"{images_file!r} ({images.shape}) and {labels_file!r} ({labels.shape}, labels up to {labels.max(initial=0)}) "
                        f"are not a Fashion-MNIST split (N x 28 x 28 images, N labels 0..9)")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)   # (N, 1, 28, 28)
    return x, torch.from_numpy(labels.astype(np.int64))


def get_dataset(name: str, split: str, data_dir: str = "data", image_size: int = 224, download: bool = False):
    """A torch Dataset of (image in [0, 1], label). Training splits carry the augmentation:
    cifar10: random crop 32 with 4-pixel padding + horizontal flip (the usual CIFAR recipe);
    imagenet: RandomResizedCrop(image_size) + flip (the paper's recipe); evaluation: resize to
    image_size * 256/224 and center-crop image_size."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    train = split == "train"
    if name == "digits":
        return torch.utils.data.TensorDataset(*digits_tensors(split))
    if name == "fashionmnist":   # no augmentation, as usual for (adversarial training on) Fashion-MNIST
        return torch.utils.data.TensorDataset(*fashion_mnist_tensors(split, data_dir, download))

    import torchvision
    import torchvision.transforms as T
    if name == "cifar10":
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()]) if train else T.ToTensor()
        folder = os.path.join(data_dir, "cifar-10-batches-py")
        if not download and not os.path.isdir(folder):
            raise UserError(f"no CIFAR-10 at {folder!r}; pass --download to fetch it, or --data to the folder holding cifar-10-batches-py/")
        try:
            return torchvision.datasets.CIFAR10(data_dir, train=train, transform=tf, download=download)
        except (RuntimeError, OSError, EOFError, KeyError, ValueError) as e:
            raise UserError(f"CIFAR-10 at {folder!r} is missing files or corrupt ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})")

    # imagenet
    sub = os.path.join(data_dir, "train" if train else "val")
    if not os.path.isdir(sub):
        raise UserError(f"no ImageNet folder {sub!r}; expected <--data>/train/<class>/*.JPEG and <--data>/val/<class>/*.JPEG")
    if train:
        tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor()])
    else:
        tf = T.Compose([T.Resize(int(round(image_size * 256 / 224))), T.CenterCrop(image_size), T.ToTensor()])
    try:
        return torchvision.datasets.ImageFolder(sub, transform=tf, loader=load_rgb)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"ImageNet folder {sub!r} is malformed: {str(e).splitlines()[0]}")


def load_rgb(path: str):
    """ImageFolder's loader, except that a corrupt or truncated image is one error line naming the file
    (PIL's own error says neither which file nor what to do)."""
    from PIL import Image
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:   # UnidentifiedImageError is an OSError
        raise UserError(f"image {path!r} cannot be read ({e.__class__.__name__}: {str(e).strip()[:120]}); replace or delete it")


def num_classes_of(dataset_name: str, ds) -> int:
    if dataset_name in NUM_CLASSES:
        return NUM_CLASSES[dataset_name]
    return len(ds.classes)


# ----------------------------------------------------------------------------------------------------
# Models. Every model is Sequential(Normalize, network): attacks see pixels in [0, 1].

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
    model; else raise one UserError line."""
    import torchvision
    if name in OWN_MODELS:
        if OWN_MODELS[name] != dataset:
            raise UserError(f"model {name!r} does not fit dataset {dataset!r}")
    elif name not in torchvision.models.list_models(module=torchvision.models):
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
        calls = acts.functional_activations(net, torch.rand(1, 3, size, size))
        if calls or not replaced:
            raise UserError(f"model {name!r} calls {', '.join(sorted(calls)) or 'its activations'} in functional form "
                            f"(torch.nn.functional), which no module swap can reach: SAT cannot change it; pick another model")
    mean, std = STATS[cfg["dataset"]]
    return nn.Sequential(Normalize(mean, std), net)


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


def model_from_checkpoint(path: str, device="cpu"):
    """(model in eval mode on device, checkpoint dict)."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["config"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint {path!r} does not fit its own config: {str(e).splitlines()[0]}")
    return model.to(device).eval(), ckpt


def config_dict(cfg) -> dict:
    """A dataclass config as a plain dict of str/int/float/bool/None/list (safe under weights_only)."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
