"""Small fake CIFAR files in the python-pickle format torchvision downloads."""

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
