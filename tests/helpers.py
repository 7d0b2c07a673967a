"""Small fake CIFAR files in the python-pickle format torchvision downloads; a read-only tree."""

import ctypes
import pickle
from pathlib import Path

import numpy as np


def write_fake_cifar(root: Path, name: str = "cifar10", n_train: int = 120, n_test: int = 40) -> Path:
    rng = np.random.default_rng(0)
    classes = 10 if name == "cifar10" else 100
    label_key = "labels" if name == "cifar10" else "fine_labels"
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)

    def dump(fname, n):
        data = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: rng.integers(0, classes, n).tolist()}
        with open(folder / fname, "wb") as f:
            pickle.dump(data, f)

    if name == "cifar10":
        for i in range(1, 6):
            dump(f"data_batch_{i}", n_train // 5)
        dump("test_batch", n_test)
        meta = {"label_names": [f"c{i}" for i in range(10)]}
        meta_name = "batches.meta"
    else:
        dump("train", n_train)
        dump("test", n_test)
        meta = {"fine_label_names": [f"c{i}" for i in range(100)]}
        meta_name = "meta"
    with open(folder / meta_name, "wb") as f:
        pickle.dump(meta, f)
    return folder


# ---------------------------------------------------------------------- a read-only tree
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


def _drop_root_overrides() -> None:
    """(preexec_fn) A child started as root obeys file modes, as any user does: it loses the capabilities
    that let root write where a mode forbids (kept out of everything it starts, too)."""
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if _PRCTL(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot drop a capability")


def make_read_only(root: Path):
    """Make every file and folder under ``root`` read-only; returns the ``preexec_fn`` a subprocess needs
    to be held to it (as root, see :func:`_drop_root_overrides`; None for another user)."""
    import os

    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    return _drop_root_overrides if os.geteuid() == 0 else None


def make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
