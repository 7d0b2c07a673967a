import numpy as np
import pytest
import torch

from sslnb.data import DatasetUnavailable, load_dataset, make_digits
from sslnb.evaluate import knn_accuracy, knn_predict, pixel_features

from helpers import write_fake_cifar


@pytest.fixture(scope="module")
def digits():
    return make_digits()


def test_digits_shape_determinism_and_disjoint_sources(digits):
    assert digits.train.x.shape == (3000, 3, 32, 32) and digits.train.x.dtype == torch.uint8
    assert digits.test.x.shape == (1000, 3, 32, 32)
    assert set(digits.train.y.tolist()) == set(range(10)) == set(digits.test.y.tolist())
    train_src, test_src = set(digits.meta["train_sources"]), set(digits.meta["test_sources"])
    assert not train_src & test_src  # no handwritten digit is in both splits
    assert len(train_src) + len(test_src) == 1797
    again = make_digits()
    assert torch.equal(again.train.x, digits.train.x) and torch.equal(again.test.y, digits.test.y)


def test_items_are_image_label_index(digits):
    x, y, i = digits.train[7]
    assert x.shape == (3, 32, 32) and int(y) == int(digits.train.y[7]) and i == 7


def test_train_size_subset(digits):
    sub = load_dataset("digits", train_size=500)
    assert len(sub.train) == 500 and len(sub.test) == 1000


def test_fake_cifar_files_load(tmp_path):
    write_fake_cifar(tmp_path, "cifar10")
    d = load_dataset("cifar10", tmp_path, download=False)
    assert d.train.x.shape == (120, 3, 32, 32) and d.test.x.shape == (40, 3, 32, 32) and d.num_classes == 10
    write_fake_cifar(tmp_path, "cifar100")
    d = load_dataset("cifar100", tmp_path, download=False)
    assert d.num_classes == 100 and len(d.train) == 120


def test_missing_cifar_offline_gives_one_line_naming_the_folder(tmp_path):
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset("cifar100", tmp_path / "nowhere", download=False)
    msg = str(e.value)
    assert "\n" not in msg and "cifar-100-python" in msg and "nowhere" in msg and "cifar-100-python.tar.gz" in msg


def test_knn_matches_naive_vote():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 8, generator=g), torch.randn(7, 8, generator=g)
    labels = torch.randint(0, 3, (50,), generator=g)
    fast = knn_predict(train, labels, test, 3, k=5, t=0.1)
    tn, qn = train / train.norm(dim=1, keepdim=True), test / test.norm(dim=1, keepdim=True)
    for i in range(7):
        sims = [(float(qn[i] @ tn[j]), j) for j in range(50)]
        top = sorted(sims, reverse=True)[:5]
        votes = [0.0] * 3
        for s, j in top:
            votes[int(labels[j])] += np.exp(s / 0.1)
        assert int(fast[i]) == int(np.argmax(votes))


def test_pixel_knn_is_far_from_perfect(digits):
    # The embedded dataset must not be solvable by pixel matching (the book's raw-pixel reference).
    acc = knn_accuracy(pixel_features(digits.train, 16), digits.train.y, pixel_features(digits.test, 16),
                       digits.test.y, 10, k=50)
    assert 20 < acc < 80


def test_shift_controls_how_far_digits_wander(digits):
    # shift=0 centres every digit and makes pixel matching much easier; the default keeps the whole room.
    centred = make_digits(n_train=300, n_test=100, shift=0.0)
    assert np.abs(centred.meta["train_params"]["x"]).max() == 0 == np.abs(centred.meta["test_params"]["y"]).max()
    room = 1 - digits.meta["train_params"]["scale"]
    assert np.abs(digits.meta["train_params"]["x"]).max() > 0.5 * room.max()
    assert np.all(np.abs(digits.meta["train_params"]["x"]) <= room + 1e-6)
    plain = make_digits(n_train=300, n_test=100)
    accs = [knn_accuracy(pixel_features(d.train, 16), d.train.y, pixel_features(d.test, 16), d.test.y, 10, k=20)
            for d in (plain, centred)]
    assert accs[1] > accs[0] + 10


def _write_idx(path, array):
    import gzip

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files_and_says_how_to_get_them(tmp_path, monkeypatch):
    import sslnb.data as data

    monkeypatch.setattr(data, "FASHION_SYSTEM", tmp_path / "not-installed")
    with pytest.raises(DatasetUnavailable, match="dataset-fashion-mnist") as e:
        load_dataset("fashion", tmp_path / "data", download=False)
    assert "\n" not in str(e.value) and "allow the download" in str(e.value)

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr("torchvision.datasets.FashionMNIST", offline)
    with pytest.raises(DatasetUnavailable, match="the download failed") as e:  # it was allowed: no such advice
        load_dataset("fashion", tmp_path / "data", download=True)
    assert "allow the download" not in str(e.value) and "\n" not in str(e.value)
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    fashion = load_dataset("fashion", tmp_path / "data", download=False)
    assert fashion.train.x.shape == (12, 3, 28, 28) and fashion.test.x.shape == (5, 3, 28, 28)
    assert torch.equal(fashion.train.x[:, 0], fashion.train.x[:, 2])  # grey, three times
    assert fashion.train.y.tolist() == [i % 10 for i in range(12)] and fashion.num_classes == 10
    x = data.read_idx(folder / "train-images-idx3-ubyte.gz")
    assert torch.equal(torch.from_numpy(x.copy()), fashion.train.x[:, 1])


def test_the_fashion_canvas_places_each_item_whole_at_its_recorded_size_and_place(tmp_path, monkeypatch):
    """Each canvas holds its item whole (the ink it carries is the item's, scaled by its area), centred
    where ``meta`` says, the same on every call; raw pixels stop lining up with the class (the point of
    the dataset)."""
    import sslnb.data as data

    monkeypatch.setattr(data, "FASHION_SYSTEM", tmp_path / "not-installed")
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    n_train, n_test = 200, 100
    ys = [np.arange(n) % 2 for n in (n_train, n_test)]
    for split, y in zip(("train", "t10k"), ys):  # two classes: a square at the top left, one at the bottom right
        x = np.zeros((len(y), 28, 28))
        x[y == 0, 2:9, 2:9], x[y == 1, 19:26, 19:26] = 255, 255
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", x)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", y)
    plain = load_dataset("fashion", tmp_path / "data", download=False)
    canvas = load_dataset("fashion-canvas", tmp_path / "data", download=False)
    again = load_dataset("fashion-canvas", tmp_path / "data", download=False)
    assert canvas.name == "fashion-canvas" and canvas.train.x.shape == (n_train, 3, 32, 32)
    assert torch.equal(canvas.train.x, again.train.x) and torch.equal(canvas.test.y, plain.test.y)
    p = canvas.meta["train_params"]
    assert p["scale"].min() >= 0.5 and p["scale"].max() <= 0.9
    ink = canvas.train.x[:, 0].double().sum((1, 2)) / 255
    expected = torch.from_numpy(plain.train.x[:, 0].double().sum((1, 2)).numpy() / 255 * (32 * p["scale"] / 28) ** 2)
    ratio = ink / expected  # bilinear sampling of thin bars aliases: each image within 20%, on average 3%
    assert (ratio - 1).abs().max() < 0.2 and abs(ratio.mean() - 1) < 0.03  # nothing cut off at an edge
    def centre(x):  # the ink's mean column index
        x = x[:, 0].double()
        return ((x.sum(1) * torch.arange(x.shape[-1], dtype=torch.float64)).sum(1) / x.sum((1, 2))).numpy()

    item_x = (p["x"] + 1) * 16 - 0.5 + (32 * p["scale"] / 28) * (centre(plain.train.x) + 0.5 - 14)
    assert np.abs(centre(canvas.train.x) - item_x).max() < 0.5
    pixels = [knn_accuracy(pixel_features(d.train, 16), d.train.y, pixel_features(d.test, 16), d.test.y, 2, k=20)
              for d in (plain, canvas)]
    assert pixels[0] == 100.0 and pixels[1] < pixels[0]


def write_image_folder(root, digits, classes=(0, 1, 2), per_class=30, labelled=True):
    """Digits of ``classes`` as image files of mixed kinds (RGB png, grey png of another size, RGBA png,
    jpg): ``per_class`` each, in class folders or, without ``labelled``, all directly in ``root``."""
    from PIL import Image

    counts = dict.fromkeys(classes, 0)
    for i in range(len(digits.train)):
        y = int(digits.train.y[i])
        if counts.get(y, per_class) >= per_class:
            continue
        folder = root / f"c{y}" if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(digits.train.x[i].permute(1, 2, 0).numpy())
        kind = sum(counts.values()) % 4
        if kind == 1:
            im = im.convert("L").resize((40, 28))
        elif kind == 2:
            im = im.convert("RGBA").resize((64, 64))
        im.save(folder / f"{i}.{'jpg' if kind == 3 else 'png'}")
        counts[y] += 1
    return root


def test_an_image_folder_is_a_dataset_with_a_seeded_disjoint_split(tmp_path, digits):
    from sslnb.config import Config
    from sslnb.data import dataset_of, split_sizes
    from sslnb.rundir import run_name

    root = write_image_folder(tmp_path / "mine", digits)
    data = load_dataset(f"folder:{root}")
    assert data.classes == ["c0", "c1", "c2"] and data.meta["labelled"]
    assert data.train.x.shape[1:] == (3, 32, 32) and data.train.x.dtype == torch.uint8
    assert (len(data.train), len(data.test)) == split_sizes(f"folder:{root}") == (72, 18)
    again = load_dataset(f"folder:{root}")
    assert torch.equal(again.test.x, data.test.x) and torch.equal(again.train.y, data.train.y)
    assert not {x.numpy().tobytes() for x in data.test.x} & {x.numpy().tobytes() for x in data.train.x}
    assert set(data.train.y.tolist()) == {0, 1, 2}
    cfg = Config.from_preset("smoke", "byol", dataset=f"folder:{root}", batch_size=32)
    name = run_name(cfg)
    assert name.startswith("byol-folder-mine-") and len(dataset_of(cfg).train) == 72
    assert run_name(cfg) == name
    next((root / "c0").iterdir()).unlink()  # the folder changed: a run on it is another run
    assert run_name(cfg) != name


@pytest.mark.parametrize("case", ["missing", "empty", "one class", "beside and inside", "unreadable", "too few"])
def test_a_bad_image_folder_is_one_line(tmp_path, digits, case):
    from sslnb.config import Config
    from sslnb.data import dataset_of

    root = tmp_path / "mine"
    if case == "empty":
        root.mkdir()
    elif case == "one class":
        write_image_folder(root, digits, classes=(0,))
    elif case == "beside and inside":
        write_image_folder(root, digits)
        (root / "stray.png").write_bytes((next((root / "c0").glob("*.png"))).read_bytes())
    elif case == "unreadable":
        write_image_folder(root, digits)
        (root / "c1" / "zz.png").write_text("not an image")
    elif case == "too few":
        write_image_folder(root, digits, per_class=3)
    words = {"missing": "is not a folder", "empty": "holds no images", "one class": "one class folder (c0/)",
             "beside and inside": "both directly (stray.png", "unreadable": "zz.png cannot be read as an image",
             "too few": "fewer than one batch (64)"}[case]
    with pytest.raises(DatasetUnavailable) as e:
        dataset_of(Config.from_preset("smoke", "byol", dataset=f"folder:{root}"))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_byol_and_simclr_train_on_a_folder_with_and_without_classes(tmp_path, digits):
    """Labelled: kNN and the probe as on any dataset. Unlabelled: no kNN and no probe, but the loss curve,
    the collapse diagnostics and the features for t-SNE."""
    from sslnb.config import Config
    from sslnb.runs import load_run
    from sslnb.train import train

    labelled = write_image_folder(tmp_path / "classes", digits, per_class=24)
    plain = write_image_folder(tmp_path / "plain", digits, per_class=24, labelled=False)
    for method, root in (("byol", labelled), ("simclr", plain)):
        cfg = Config.from_preset("smoke", method, dataset=f"folder:{root}", batch_size=32, epochs=1, device="cpu")
        run = load_run(train(cfg, tmp_path / "runs" / method, progress=False))
        assert run.done and run.result["train_images"] == 58 and run.result["eff_rank"] > 0
        assert run.metric("loss", "step")[1] and run.features()["h"].shape[0] == 14
        if root is labelled:
            assert run.result["knn"] is not None and run.result["probe_best"] is not None
        else:
            assert run.result["knn"] is None and run.result.get("probe_best") is None
            assert "knn" not in run.records("epoch")[-1] and "z_std" in run.records("epoch")[-1]


def test_the_example_folder_is_written_once_and_alike_everywhere(tmp_path, digits):
    """The chapter "Your own images" writes its folder from the embedded digits: the same listing (names,
    sizes, modification times: a run's identity) under any data root, written once, and one line where it
    cannot be written."""
    from sslnb.data import EXAMPLE_FOLDER, folder_digest, write_example_folder
    from sslnb.experiments import chapter_runs

    a, b = write_example_folder(tmp_path / "a", digits=digits), write_example_folder(tmp_path / "b", digits=digits)
    assert a == tmp_path / "a" / EXAMPLE_FOLDER and folder_digest(a) == folder_digest(b)
    data = load_dataset(f"folder:{a}")
    assert (len(data.train), len(data.test), data.num_classes) == (480, 120, 10)
    assert not list(tmp_path.glob("*/.*tmp*")), "no temporary folder is left behind"
    (a / "zero" / "mine.png").write_bytes(next((a / "one").iterdir()).read_bytes())
    assert write_example_folder(tmp_path / "a") == a and (a / "zero" / "mine.png").exists(), "left as it is"
    runs = chapter_runs("09_own_images", "smoke", dataset="cifar10", data_root=str(tmp_path / "b"))
    assert {c.dataset for c in runs.values()} == {f"folder:{b.resolve()}"}, "a dataset that is not a folder is ignored"
    mine = chapter_runs("09_own_images", "smoke", dataset=f"folder:{a}", data_root=str(tmp_path / "b"))
    assert {c.dataset for c in mine.values()} == {f"folder:{a}"} and mine["untrained"].epochs == 0
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DatasetUnavailable) as e:
        write_example_folder(tmp_path / "file", digits=digits)
    assert "cannot write the example folder" in str(e.value) and "\n" not in str(e.value)
