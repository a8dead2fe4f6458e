"""The data sets, as tensors or torch Datasets of (image, label) with pixels in [0, 1].

Normalisation is the model's first layer (sat_models.Normalize), so an attack's eps is a scalar on pixels.
  digits    scikit-learn's bundled 8x8 handwritten digits (`sklearn.datasets.load_digits`: 1,797 images, 1
            channel, pixel values 0..16 divided by 16). Fixed split: a permutation drawn with numpy seed 0;
            the first 1,297 images train, the last 500 test.
  cifar10   torchvision's CIFAR-10 (32x32 RGB). Downloads into --data on a user's machine, or reads the
            existing `cifar-10-batches-py/` folder there.
  fashionmnist  Zalando's Fashion-MNIST (28x28 grey, 60,000 train / 10,000 test, 10 classes of clothing), read
            from its four original idx .gz files in --data (or in --data/FashionMNIST/raw/, where
            torchvision's FashionMNIST downloads them with --download). Debian/Ubuntu: `apt-get update &&
            apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist.
  imagenet  an ImageFolder tree: <--data>/train/<class>/*.JPEG and <--data>/val/<class>/*.JPEG.
A training set's random augmentation is drawn per image from (seed, epoch, image index): SeededAugmentation.
"""
import gzip
import hashlib
import os

import numpy as np
import torch

from sat_cli import UserError

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


def load_digits():
    """scikit-learn's digits as numpy arrays: images (1797, 8, 8) of values 0..16, labels (1797,). They are the
    file `load_digits()` reads, sklearn/datasets/data/digits.csv.gz (one image a row, 64 pixels then the label),
    read here as load_digits reads it but without importing scikit-learn, which costs 1.5 s of CPU in every
    process (tests/test_train.py checks that both give the same arrays)."""
    import importlib.util
    spec = importlib.util.find_spec("sklearn")   # finds the installed package without running its code
    if spec is None:
        raise UserError("scikit-learn is not installed (its digits are the built-in data set): pip install scikit-learn")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def digits_tensors(split: str):
    """(x, y) for 'train' or 'test': x (N, 1, 8, 8) float32 in [0, 1] (raw values 0..16 divided by 16)."""
    images, target = load_digits()
    x = torch.tensor(images / 16.0, dtype=torch.float32).unsqueeze(1)   # (1797, 1, 8, 8)
    y = torch.tensor(target, dtype=torch.long)
    perm = torch.from_numpy(np.random.RandomState(0).permutation(len(y)))
    idx = perm[:DIGITS_N_TRAIN] if split == "train" else perm[DIGITS_N_TRAIN:]
    return x[idx], y[idx]


# Fashion-MNIST's four files, as Zalando distributes them (and torchvision and Debian keep them): per split,
# images (idx3: magic 2051, count, 28, 28, then uint8 pixels) and labels (idx1: magic 2049, count, then uint8)
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"   # torchvision's source for CIFAR10(download=True)


def offline(e: BaseException) -> bool:
    """Whether a --download failed for want of a network (no name resolution, no route, a refused or timed-out
    connection: urllib's URLError, whose text torchvision's FashionMNIST puts in a RuntimeError), not because a
    server answered with an error (HTTPError, a URLError too) or a file was bad."""
    import socket
    import urllib.error
    if isinstance(e, urllib.error.HTTPError):
        return False
    return isinstance(e, (urllib.error.URLError, socket.timeout, ConnectionError)) or "<urlopen error" in str(e)


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
            what = "could not reach the network" if offline(e) else f"into {candidates[1]!r} failed"
            raise UserError(f"Fashion-MNIST --download {what} ({e.__class__.__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                            f"offline, point --data at a folder holding its four .gz files (`apt-get update && apt-get install dataset-fashion-mnist`: /usr/share/datasets/fashion-mnist)")
        return candidates[1]
    raise UserError(f"no Fashion-MNIST in {data_dir!r} (nor in its FashionMNIST/raw/): it needs {', '.join(names)}; "
                    f"`apt-get update && apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist, or pass --download")


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


def get_dataset(name: str, split: str, data_dir: str = "data", image_size: int = 224, download: bool = False,
                augment=None):
    """A torch Dataset of (image in [0, 1], label). Training splits carry the augmentation (augment=False: the
    training images as the evaluation sees them, for a validation split carved from them):
    cifar10: random crop 32 with 4-pixel padding + horizontal flip (the usual CIFAR recipe);
    imagenet: RandomResizedCrop(image_size) + flip (the paper's recipe); evaluation: resize to
    image_size * 256/224 and center-crop image_size."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    train = split == "train" and augment is not False
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
            return torchvision.datasets.CIFAR10(data_dir, train=split == "train", transform=tf, download=download)
        except (RuntimeError, OSError, EOFError, KeyError, ValueError) as e:
            why = f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if download and offline(e):
                raise UserError(f"CIFAR-10 --download could not reach the network ({why}); on a machine with internet fetch "
                                f"{CIFAR10_URL}, unpack it into {data_dir!r} (cifar-10-batches-py/) and leave --download out")
            raise UserError(f"CIFAR-10 at {folder!r} is missing files or corrupt ({why})")

    # imagenet
    sub = os.path.join(data_dir, "train" if split == "train" else "val")
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


VAL_SEED = 2020   # fixed: every run on a data set holds out the same validation images, whatever its own seed


def labels_of(ds) -> torch.Tensor:
    """Every label of a data set, without loading its images."""
    if isinstance(ds, torch.utils.data.TensorDataset):
        return ds.tensors[1]
    return torch.as_tensor(ds.targets)   # CIFAR10, ImageFolder


def validation_split(train_ds, plain_ds, n: int, seed: int = VAL_SEED):
    """(train, val): n images held out of the training set, which training then never sees (Rice et al. 2020
    choose the early-stopping epoch on such a split). Class-balanced: n / classes of each class (the remainder
    to the first classes), drawn by a fixed seed; val is in random order, so its first k images are a random
    sample too. train comes from train_ds (with its augmentation), val from plain_ds (the same images, no
    augmentation). n = 0: (train_ds, None)."""
    if n == 0:
        return train_ds, None
    labels = labels_of(train_ds)
    classes = sorted(set(labels.tolist()))
    if n >= len(labels):
        raise UserError(f"--val-size {n} holds out the whole training set ({len(labels)} images); accepted: 0 .. {len(labels) - 1}")
    g = torch.Generator().manual_seed(seed)
    val = []
    for i, c in enumerate(classes):
        members = (labels == c).nonzero().flatten()
        take = n // len(classes) + (i < n % len(classes))
        if take > len(members):
            raise UserError(f"--val-size {n}: class {c} has {len(members)} training images, fewer than the {take} it should give")
        val.append(members[torch.randperm(len(members), generator=g)[:take]])
    val = torch.cat(val)
    val = val[torch.randperm(len(val), generator=g)].tolist()
    held = set(val)
    train = [i for i in range(len(labels)) if i not in held]
    return torch.utils.data.Subset(train_ds, train), torch.utils.data.Subset(plain_ds, val)


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image `index`'s augmentation in `epoch` of a run seeded `seed`: a hash of the three, so that
    neighbouring images, epochs and seeds draw unrelated crops (torch's CPU generator keeps its low 32 bits)."""
    return int.from_bytes(hashlib.blake2b(f"{seed} {epoch} {index}".encode(), digest_size=8).digest(), "little")


class SeededAugmentation(torch.utils.data.Dataset):
    """A training set whose random augmentation is a function of (seed, epoch, image) alone. Item (epoch, i) is
    image i of `dataset`, transformed while torch's CPU generator is seeded by augmentation_seed(seed, epoch, i)
    and put back as it was afterwards: torchvision's transforms (cifar10's crop and flip, imagenet's
    RandomResizedCrop and flip) draw from that generator. So neither the process that loads an image (the main
    one or a DataLoader worker), nor the number of workers, nor a restart changes its draw: a resumed run sees
    the crops of an uninterrupted one, and --workers 0 trains the weights of --workers 4. Images without a
    random transform (digits, Fashion-MNIST) come out as they are. The DataLoader asks for a batch of keys at
    once (__getitems__): one save and restore of the generator per batch."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys):
        with torch.random.fork_rng(devices=[]):   # the caller's random state (the PGD random starts') comes back
            items = []
            for epoch, i in keys:
                torch.default_generator.manual_seed(augmentation_seed(self.seed, epoch, i))
                items.append(self.dataset[i])
        return items


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
