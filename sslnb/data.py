"""Datasets as uint8 tensors in memory: CIFAR-10/100 and the embedded offline ``digits``.

Every dataset is loaded whole into (N, 3, H, W) uint8 tensors, so that batches are cut by indexing
and augmented in batches on whatever device holds them (``sslnb.augment``). Items of a split are
``(x, y, idx)``: the image, its label and its index in the split (InsDis's memory bank needs it).
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# The seed normalises CIFAR-10 and CIFAR-100 with these (the widely copied CIFAR-10 std).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


TRAIN_SIZES = {"digits": 3000, "cifar10": 50000, "cifar100": 50000, "fashion": 60000, "fashion-canvas": 60000}
TEST_SIZES = {"digits": 1000, "cifar10": 10000, "cifar100": 10000, "fashion": 10000, "fashion-canvas": 10000}
DATASETS = tuple(TRAIN_SIZES)  # the one list of dataset names (config validates against it)


def batches_per_epoch(n: int, batch_size: int, bn_groups: int, world_size: int = 1) -> int:
    """Optimiser steps in one epoch over ``n`` images. The seed kept the last, smaller batch
    (drop_last=False); it is dropped only if BatchNorm cannot use it (fewer than 2 samples per BN group),
    or if several processes would have to split it unevenly."""
    if world_size > 1:
        return n // batch_size
    return n // batch_size + (n % batch_size >= 2 * bn_groups)


def split_sizes(dataset: str) -> tuple[int, int]:
    """(training images, test images) of a dataset, without loading it (a folder is listed)."""
    if is_folder(dataset):
        files = folder_listing(folder_path(dataset))[0]
        return len(files) - _folder_test_count(len(files)), _folder_test_count(len(files))
    return TRAIN_SIZES[dataset], TEST_SIZES[dataset]


def train_images(cfg) -> int:
    """How many training images a run's config uses (its dataset's, or ``train_size`` of them)."""
    n = split_sizes(cfg.dataset)[0]
    return min(n, cfg.train_size) if cfg.train_size else n


def steps_per_epoch(cfg) -> int:
    """Optimiser steps per epoch of a run's config (any object with the Config fields), without
    loading the data: for progress bars and for placing step records on an epoch axis."""
    return batches_per_epoch(train_images(cfg), cfg.batch_size, cfg.bn_groups, cfg.world_size)


class DatasetUnavailable(RuntimeError):
    """The dataset's files are missing and cannot be fetched; the message says how to get them."""


@dataclass
class Split:
    """One split held in memory. ``x`` (N, 3, H, W) uint8, ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class ImageData:
    name: str
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> normalised with the dataset's mean and std."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std


def load_dataset(name: str, root: str | Path = "data", download: bool = True, train_size: int = 0,
                 digits_style: dict | None = None) -> ImageData:
    """Load ``digits``, ``cifar10``, ``cifar100``, ``fashion`` (Fashion-MNIST) or ``fashion-canvas`` (its items
    placed at a random size and position on a larger canvas, :func:`fashion_canvas`). ``train_size`` > 0 keeps
    a fixed random subset; ``digits_style`` overrides entries of ``DIGITS_STYLE`` (the embedded digits only)."""
    if is_folder(name):
        data = load_folder(folder_path(name))
    elif name == "digits":
        data = make_digits(**(digits_style or {}))
    elif name in ("cifar10", "cifar100"):
        data = load_cifar(name, Path(root), download)
    elif name == "fashion":
        data = load_fashion(Path(root), download)
    elif name == "fashion-canvas":
        data = fashion_canvas(load_fashion(Path(root), download))
    else:
        raise ValueError(f"dataset={name!r} is not allowed; choose one of: {', '.join(DATASETS)}, or folder:PATH")
    if 0 < train_size < len(data.train):
        keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1234))[:train_size]
        keep = keep.sort().values
        data.train = Split(data.train.x[keep], data.train.y[keep])
    return data


def dataset_of(cfg) -> ImageData:
    """The data a run's config (any object with the Config fields) trains and evaluates on."""
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, cfg.train_size, cfg.digits_style)
    if is_folder(cfg.dataset) and len(data.train) < cfg.batch_size:
        raise DatasetUnavailable(f"{folder_path(cfg.dataset)} gives {len(data.train)} training images, fewer than "
                                 f"one batch ({cfg.batch_size}); add images or set a smaller --batch-size")
    return data


# ---------------------------------------------------------------------- your own images
FOLDER = "folder:"  # a dataset named folder:PATH is the images under PATH
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FOLDER_SIZE = 32  # images are stored at this side, as CIFAR is; the run's image_size is what the network sees
FOLDER_TEST = 0.2  # the share of a folder's images held out as its test split (seeded, disjoint)


def is_folder(dataset: str) -> bool:
    return isinstance(dataset, str) and dataset.startswith(FOLDER)


def folder_path(dataset: str) -> Path:
    return Path(dataset[len(FOLDER):]).expanduser()


def _folder_test_count(n: int) -> int:
    return max(1, round(FOLDER_TEST * n))


def folder_listing(root: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """``(files, labels, classes)`` of an image folder, sorted: with class subfolders (one level) the
    labels are their indices in ``classes``; with images directly in ``root``, ``labels`` is None.
    A missing or empty folder, images both beside and inside subfolders, or a single class are one-line
    :class:`DatasetUnavailable` errors."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetUnavailable(f"{root} is not a folder; give --dataset folder:PATH with PATH a folder of images "
                                 f"(class subfolders optional)")
    is_image = lambda p: p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")  # noqa: E731
    loose = sorted(p for p in root.iterdir() if is_image(p))
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and any(is_image(p) for p in d.iterdir()))
    if loose and classes:
        raise DatasetUnavailable(f"{root} holds images both directly ({loose[0].name}, ...) and in class folders "
                                 f"({classes[0]}/, ...); put every image in a class folder, or none")
    if loose:
        return loose, None, ["unlabelled"]
    if not classes:
        raise DatasetUnavailable(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}), directly or in class folders")
    if len(classes) == 1:
        raise DatasetUnavailable(f"{root} has one class folder ({classes[0]}/): a classifier needs two or more; "
                                 f"put the images directly in {root} to train without labels")
    files, labels = [], []
    for i, name in enumerate(classes):
        mine = sorted(p for p in (root / name).iterdir() if is_image(p))
        files += mine
        labels += [i] * len(mine)
    return files, labels, classes


def folder_digest(root: Path) -> str:
    """A digest of an image folder's listing (names, sizes and modification times): part of the identity of
    a run on it, so that a folder whose images change gives new runs."""
    import hashlib

    files = folder_listing(root)[0]
    h = hashlib.sha1()
    for path in files:
        st = path.stat()
        h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def _read_image(path: Path, size: int) -> np.ndarray:
    """One image file as (size, size, 3) uint8 RGB: grey and RGBA become RGB (transparency over black), the
    shorter side is resized to ``size`` and the centre cut out."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                back = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(back, im)
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DatasetUnavailable(f"{path} cannot be read as an image ({type(e).__name__}); remove or replace it") from None
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_folder(root: Path, size: int = FOLDER_SIZE, seed: int = 0) -> ImageData:
    """The images under ``root`` (:func:`folder_listing`) as a dataset: a seeded, disjoint split holding out
    :data:`FOLDER_TEST` of them for testing; mean and std from the training images. ``meta["labelled"]`` says
    whether class folders gave labels (without them every label is 0, and kNN and the probe are not run)."""
    files, labels, classes = folder_listing(root)
    n, n_test = len(files), _folder_test_count(len(files))
    if n < 2:
        raise DatasetUnavailable(f"{root} holds {n} image; a training and a test split need two at least")
    x = torch.from_numpy(np.stack([_read_image(p, size) for p in files])).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(labels if labels is not None else [0] * n, dtype=torch.int64)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test].sort().values, order[n_test:].sort().values
    pixels = x[train].float().div(255)
    mean = tuple(pixels.mean(dim=(0, 2, 3)).tolist())
    std = tuple(pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return ImageData(f"folder:{root}", Split(x[train], y[train]), Split(x[test], y[test]), classes, mean, std,
                     meta={"labelled": labels is not None, "files": [str(files[i].relative_to(root)) for i in test]})


# The book's chapter "Your own images" trains on a folder it writes from the embedded digits, so that it
# runs offline; its files are the same on every machine (names, sizes and modification times, which the
# digest of a run on a folder reads), so its runs are named alike everywhere.
EXAMPLE_FOLDER = "own-images-digits"
EXAMPLE_MTIME_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_example_folder(data_root: str | Path, per_class: int = 60, digits: ImageData | None = None) -> Path:
    """The example image folder under ``data_root``: ``per_class`` training images of each class of the
    embedded digits (``digits``, by default :func:`make_digits`), as uncompressed 32x32 PNG files in class folders ``zero/`` ...
    ``nine/``. Written once (into a temporary folder, then renamed into place) and left as it is after that;
    returns its path. A data root that cannot be written is a one-line :class:`DatasetUnavailable`."""
    from PIL import Image

    root = Path(data_root) / EXAMPLE_FOLDER
    if root.is_dir():
        return root
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        train = (digits or make_digits()).train
        for c, name in enumerate(DIGIT_NAMES):
            (tmp / name).mkdir(parents=True)
            for i in torch.nonzero(train.y == c).flatten()[:per_class].tolist():
                path = tmp / name / f"{i:04d}.png"
                Image.fromarray(train.x[i].permute(1, 2, 0).numpy()).save(path, compress_level=0)
                os.utime(path, ns=(EXAMPLE_MTIME_NS, EXAMPLE_MTIME_NS))
        try:
            os.replace(tmp, root)
        except OSError:  # another process put it there first
            if not root.is_dir():
                raise
    except OSError as e:
        raise DatasetUnavailable(f"cannot write the example folder {root} ({e.strerror or e}); give a writable "
                                 f"--data-root, or dataset='folder:PATH' with a folder of your images") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# ---------------------------------------------------------------------- CIFAR
_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz", label="labels",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", names="label_names", title="CIFAR-10"),
    "cifar100": dict(folder="cifar-100-python", archive="cifar-100-python.tar.gz", label="fine_labels",
                     train=["train"], test=["test"], meta="meta", names="fine_label_names", title="CIFAR-100"),
}


def load_cifar(name: str, root: Path, download: bool = True) -> ImageData:
    """Read the python-pickle CIFAR files under ``root``; fetch them with torchvision if missing."""
    spec = _CIFAR[name]
    folder = root / spec["folder"]
    if not folder.is_dir() and (root / spec["archive"]).is_file():
        with tarfile.open(root / spec["archive"]) as tar:
            tar.extractall(root, filter="data")
    if not folder.is_dir():
        _download_cifar(name, root, download)

    def read(files):
        xs, ys = [], []
        for f in files:
            with open(folder / f, "rb") as fh:
                d = pickle.load(fh, encoding="latin1")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[spec["label"]], dtype=np.int64))
        return Split(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))

    try:
        with open(folder / spec["meta"], "rb") as fh:
            classes = list(pickle.load(fh, encoding="latin1")[spec["names"]])
        train, test = read(spec["train"]), read(spec["test"])
    except (OSError, KeyError, pickle.UnpicklingError, ValueError) as e:
        raise DatasetUnavailable(f"{spec['title']} files in {folder} are incomplete or unreadable ({e}); "
                                 f"delete the folder and put {spec['archive']} in {root}") from None
    return ImageData(name, train, test, classes, CIFAR_MEAN, CIFAR_STD)


def _download_cifar(name: str, root: Path, download: bool) -> None:
    spec = _CIFAR[name]
    how = (f"put {spec['archive']} (https://www.cs.toronto.edu/~kriz/{spec['archive']}) in {root}/ "
           f"or use --dataset digits, the embedded offline dataset")
    if not download:
        raise DatasetUnavailable(f"{spec['title']} not found in {root / spec['folder']} and download is off: {how}")
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except Exception as e:  # no network, proxy refusal, bad checksum...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetUnavailable(f"{spec['title']} not found in {root / spec['folder']} and the download "
                                 f"failed ({reason}): {how}") from None


# ---------------------------------------------------------------------- Fashion-MNIST
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
# Where the four idx files may already be: torchvision's layout under the data root, a plain folder, and
# Debian's package dataset-fashion-mnist (which installs offline, from the package mirror).
FASHION_FOLDERS = ("FashionMNIST/raw", "fashion-mnist")
FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format: big-endian dims after a magic number; gzipped or not) as an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of bytes")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {array.size} values, not {shape}")
    return array.reshape(shape)


def _fashion_folder(root: Path) -> Path | None:
    for folder in [root / f for f in FASHION_FOLDERS] + [FASHION_SYSTEM]:
        if all(any((folder / (name + ext)).is_file() for ext in ("", ".gz"))
               for pair in _FASHION_FILES.values() for name in pair):
            return folder
    return None


def load_fashion(root: Path, download: bool = True) -> ImageData:
    """Fashion-MNIST (Xiao et al., 2017): 60,000 train and 10,000 test 28x28 grey images of 10 kinds of
    clothing, as (N, 3, 28, 28) uint8 (the grey channel three times, so every pipeline applies). Read from
    the idx files under ``root`` or Debian's ``/usr/share/datasets/fashion-mnist``; downloaded by
    torchvision into ``root`` if missing and ``download`` is on."""
    folder = _fashion_folder(root)
    if folder is None:
        how = (f"install Debian's dataset-fashion-mnist (make fashion-mnist) or put the four idx files in "
               f"{root / 'fashion-mnist'}")
        if not download:
            how += ", or allow the download (--download true)"
            raise DatasetUnavailable(f"Fashion-MNIST not found under {root} or {FASHION_SYSTEM}: {how}")
        import torchvision

        try:
            torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        except Exception as e:  # no network, proxy refusal, bad checksum...
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DatasetUnavailable(f"Fashion-MNIST not found and the download failed ({reason}): {how}") from None
        folder = _fashion_folder(root)

    def read(split: str) -> Split:
        images, labels = (next(p for p in (folder / name, folder / (name + ".gz")) if p.is_file())
                          for name in _FASHION_FILES[split])
        try:
            x, y = read_idx(images), read_idx(labels)
        except (OSError, ValueError, EOFError) as e:
            raise DatasetUnavailable(f"Fashion-MNIST files in {folder} are unreadable ({e}); put intact copies "
                                     f"in {root / 'fashion-mnist'}") from None
        x = torch.from_numpy(x.copy()).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        return Split(x, torch.from_numpy(y.astype(np.int64)))

    train, test = read("train"), read("test")
    grey = train.x[:, 0].float().div(255)
    mean, std = (grey.mean().item(),) * 3, (grey.std().item(),) * 3
    return ImageData("fashion", train, test, list(FASHION_CLASSES), mean, std)


# Fashion-MNIST's items at a random size and position on a larger black canvas: the variation between two
# photos of one object that augmentations teach a network to ignore. Raw pixels compare images point by
# point, so a shifted or resized item no longer matches its class's other images (issue 25 measures how
# much this costs pixels and how much each method recovers).
CANVAS = dict(size=32, scale=(0.5, 0.9), seed=0)


def fashion_canvas(data: ImageData, size: int = CANVAS["size"], scale=CANVAS["scale"], seed: int = CANVAS["seed"]) -> ImageData:
    """Each image of ``data`` (Fashion-MNIST) redrawn on a ``size`` x ``size`` black canvas, its item's side
    a random fraction ``scale`` of the canvas and its position random inside it (bilinear, one draw per
    image from ``seed``: the same tensors on every machine). Train and test stay Fashion-MNIST's own,
    disjoint splits. ``meta`` holds each image's ``scale``, ``x`` and ``y`` (the item's centre in [-1, 1])."""
    rng = np.random.default_rng(seed)
    train, train_params = _place(data.train, size, scale, rng)
    test, test_params = _place(data.test, size, scale, rng)
    grey = train.x[:, 0].float().div(255)
    mean, std = (grey.mean().item(),) * 3, (grey.std().item(),) * 3
    return ImageData("fashion-canvas", train, test, data.classes, mean, std,
                     meta={"canvas": {"size": size, "scale": tuple(scale), "seed": seed},
                           "train_params": train_params, "test_params": test_params})


def _place(split: Split, size: int, scale, rng: np.random.Generator) -> tuple[Split, dict]:
    """The images of ``split`` (N, 3, h, w) uint8, grey, each scaled to a random ``scale`` of a ``size``
    canvas and placed at a random position inside it."""
    n, h = len(split), split.x.shape[-1]
    item = F.pad(split.x[:, :1].float().div(255), (1, 1, 1, 1))  # a zero border to sample into
    frac = torch.from_numpy(rng.uniform(*scale, size=n).astype(np.float32))
    room = 1 - frac  # keep the item inside the canvas
    tx = torch.from_numpy(rng.uniform(-1, 1, size=n).astype(np.float32)) * room
    ty = torch.from_numpy(rng.uniform(-1, 1, size=n).astype(np.float32)) * room
    zoom = h / (h + 2) / frac  # canvas coordinates -> bordered item coordinates (the item spans 2 * frac)
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([zoom, zero, -zoom * tx], 1), torch.stack([zero, zoom, -zoom * ty], 1)], 1)
    x = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for a in range(0, n, 10000):  # in slices: the sampling grid of 60,000 canvases is large
        grid = F.affine_grid(theta[a:a + 10000], (len(theta[a:a + 10000]), 1, size, size), align_corners=False)
        ink = F.grid_sample(item[a:a + 10000], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x[a:a + 10000] = (ink.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    return Split(x, split.y.clone()), {"scale": frac.numpy(), "x": tx.numpy(), "y": ty.numpy()}


# ---------------------------------------------------------------------- the embedded digits
DIGITS_VERSION = 2  # part of every digits run's identity: bump it when the rendering changes
# Version 2 of the design: the rendering parameters (see make_digits). Each per-image constant that two
# augmented views share and the class does not explain is an identity shortcut, so the background level,
# the contrast and any background texture are the same for every image; the digit's size, slant and
# position vary (crops change the first and last, so they are weak identities; raw pixels suffer).
DIGITS_STYLE = dict(scale=(0.35, 0.75), rotation=15.0, level=(0.15, 0.15), texture=0.0, noise=0.02,
                    contrast=(0.55, 0.55), shift=1.0)


def make_digits(seed: int = 0, n_train: int = 3000, n_test: int = 1000, size: int = 32, **style) -> ImageData:
    """The embedded offline dataset: scikit-learn's 1,797 8x8 handwritten digits rendered into 32x32
    RGB scenes, deterministically (the same tensors on every machine).

    Each source digit belongs to train or test, never both (a stratified 70/30 split of the sources),
    so test accuracy measures generalisation to new handwriting. Each image places one digit at a random
    size (35-75% of the canvas height), slant (+-15 degrees) and position on a dark grey background with
    a little pixel noise. Background level, contrast and texture are the same for every image (``style``
    can change them): a per-image colour, grey level or texture is shared by two crops of one image and
    is an easier way to tell images apart than reading the digit (the book's intro and BYOL chapter
    measure such shortcuts). ``style`` overrides entries of ``DIGITS_STYLE``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    src = torch.from_numpy(digits.images.astype(np.float32) / 16.0)  # (1797, 8, 8) in [0, 1]
    labels = torch.from_numpy(digits.target.astype(np.int64))
    rng = np.random.default_rng(seed)
    train_src, test_src = [], []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == c))
        cut = int(round(0.7 * len(members)))
        train_src += members[:cut].tolist()
        test_src += members[cut:].tolist()
    style = {**DIGITS_STYLE, **style}
    train, train_pick, train_params = _render(src, labels, np.array(train_src), n_train, size, rng, **style)
    test, test_pick, test_params = _render(src, labels, np.array(test_src), n_test, size, rng, **style)
    mean = tuple(train.x.float().div(255).mean(dim=(0, 2, 3)).tolist())
    std = tuple(train.x.float().div(255).std(dim=(0, 2, 3)).tolist())
    return ImageData("digits", train, test, [str(c) for c in range(10)], mean, std,
                     meta={"train_sources": train_pick, "test_sources": test_pick, "style": style,
                           "train_params": train_params, "test_params": test_params})


def _render(src: torch.Tensor, labels: torch.Tensor, pool: np.ndarray, n: int, size: int,
            rng: np.random.Generator, scale=(0.4, 0.85), rotation=20.0, level=(0.0, 0.35), texture=0.06,
            noise=0.02, contrast=(0.4, 0.65), shift=1.0) -> tuple[Split, np.ndarray]:
    """Render ``n`` scenes from the source digits in ``pool`` (cycled, then shuffled).
    Returns the split, the index of each image's source digit, and each image's rendering parameters
    (digit scale, angle in degrees, position, background level, contrast) as arrays. ``shift`` is the
    fraction of the free room the digit's position may use (1: anywhere inside the canvas; 0: centred)."""
    pick = rng.permutation(np.resize(rng.permutation(pool), n))  # indices into the 1,797 sources
    glyph = F.pad(src[pick].unsqueeze(1), (1, 1, 1, 1))  # (n, 1, 10, 10): a zero border to sample into

    def u(lo, hi, shape=(n,)):
        return torch.from_numpy(rng.uniform(lo, hi, size=shape).astype(np.float32))

    # Affine map from canvas coordinates [-1, 1] to glyph coordinates [-1, 1] (grid_sample's convention).
    scale = u(*scale) * 10 / 8  # digit height as a fraction of the canvas (the glyph has a border)
    angle = u(-rotation, rotation) * np.pi / 180
    room = (1 - scale * 8 / 10).clamp(min=0)  # keep the digit inside the canvas
    tx, ty = u(-1, 1) * room * shift, u(-1, 1) * room * shift
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, -(cos * tx - sin * ty)], 1),
                         torch.stack([sin, cos, -(sin * tx + cos * ty)], 1)], 1)
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    ink = F.grid_sample(glyph, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Background: a grey level plus smooth low-frequency texture and a little pixel noise.
    level = u(*level).view(n, 1, 1, 1)
    tex = F.interpolate(torch.from_numpy(rng.normal(0, 1, (n, 1, 4, 4)).astype(np.float32)),
                            size=(size, size), mode="bicubic", align_corners=False)
    background = level + texture * tex + noise * torch.from_numpy(rng.normal(0, 1, (n, 1, size, size)).astype(np.float32))
    brightness = (level + u(*contrast).view(n, 1, 1, 1)).clamp(max=1.0)
    img = background * (1 - ink) + brightness * ink
    x = (img.clamp(0, 1) * 255).round().to(torch.uint8).expand(n, 3, size, size).contiguous()
    params = {"scale": scale.numpy() * 8 / 10, "angle": angle.numpy() * 180 / np.pi, "x": tx.numpy(), "y": ty.numpy(),
              "background": level.flatten().numpy(), "contrast": (brightness - level).flatten().numpy()}
    return Split(x, labels[pick].clone()), pick, params
