"""Tests for sslnb.augment: the API, the batched ops against torchvision's functional
ops, and the pipelines' output statistics against the seed's per-image torchvision v1
transforms on PIL images (what the seed ran on CIFAR)."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter

from sslnb import augment as A
from sslnb.augment import PIPELINES, BatchAugment, resize_batch

SIZE = 32
DRAWS = 400         # draws per test image for the pipeline statistics (PIL costs ~1 ms a draw)
CROP_DRAWS = 3000   # draws for the crop-extent statistics (crop only: cheaper)
Z_OK = 4.0          # largest |z| a correct pipeline may show on any statistic
Z_BAD = 8.0         # smallest |z| a broken variant must show on the statistic it breaks


@pytest.fixture(autouse=True)
def _one_thread():
    # Many small ops: with other work on the two cores, intra-op threads only wait on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- test images

def _test_images() -> torch.Tensor:
    """(4, 3, 32, 32) structured images in [0, 1], 8-bit like CIFAR:
    0 grey left-to-right ramp, 1 reddish with a vertical shade, 2 grey checkerboard
    of period 8, 3 coloured shapes (blue ground, yellow square, green disc)."""
    u = (torch.arange(SIZE, dtype=torch.float32) + 0.5) / SIZE
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    ramp = (0.15 + 0.6 * xx).expand(3, -1, -1)
    red = torch.tensor([0.8, 0.3, 0.2]).view(3, 1, 1) * (0.7 + 0.3 * yy)
    cells = torch.arange(SIZE) // 4 % 2
    checker = (0.25 + 0.5 * (cells[:, None] ^ cells[None, :]).float()).expand(3, -1, -1)
    shapes = torch.tensor([0.1, 0.2, 0.7]).view(3, 1, 1).repeat(1, SIZE, SIZE)
    square = (xx < 0.45) & (yy < 0.45)
    disc = (xx - 0.7) ** 2 + (yy - 0.65) ** 2 < 0.25 ** 2
    shapes[:, square] = torch.tensor([0.9, 0.8, 0.1])[:, None]
    shapes[:, disc] = torch.tensor([0.2, 0.8, 0.3])[:, None]
    return (torch.stack([ramp, red, checker, shapes]) * 255).round() / 255


IMAGES = _test_images()
PILS = [Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()) for img in IMAGES]


# --------------------------------------------------------------------------- the seed's transforms

class _PILGaussianBlur:
    """The seed's GaussianBlur (PIL, radius = sigma), drawing sigma from torch's RNG."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img):
        sigma = float(torch.empty(1).uniform_(*self.sigma))
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))


def _seed_transform(name: str):
    """The seed's per-image pipeline on PIL images, without Normalize."""
    crop = T.RandomResizedCrop(SIZE, scale=(0.2, 1.0))
    if name == "normal":
        return T.Compose([crop, T.ColorJitter(0.4, 0.4, 0.4, 0.4), T.RandomGrayscale(0.2), T.ToTensor()])
    return T.Compose([
        crop,
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([_PILGaussianBlur((0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
    ])


def _seed_outputs(tf, images, draws: int) -> torch.Tensor:
    """(draws, n, 3, 32, 32) outputs of a per-image transform on PIL images."""
    torch.manual_seed(1234)
    return torch.stack([torch.stack([tf(img) for img in images]) for _ in range(draws)])


def _our_outputs(aug: BatchAugment, images: torch.Tensor, draws: int) -> torch.Tensor:
    """(draws, n, 3, 32, 32) outputs of the batched pipeline."""
    g = torch.Generator().manual_seed(0)
    x = images.repeat(draws, 1, 1, 1)
    out = torch.cat([aug(part, generator=g) for part in x.split(1024)])
    return out.view(draws, len(images), 3, SIZE, SIZE)


# --------------------------------------------------------------------------- statistics

def _stats(y: torch.Tensor) -> dict:
    """Per-draw summary statistics, each (draws, n), of outputs y (draws, n, 3, H, W).

    Outputs are first quantised to 8 bits as the reference's are, so that float rounding
    noise in flat regions does not count as structure.
    """
    y = (y * 255).round() / 255
    mean = y.mean(dim=(-3, -2, -1))
    gray = y.mean(dim=-3)
    half = y.shape[-1] // 2
    dx = y[..., 1:] - y[..., :-1]
    rng = (y.amax(dim=(-3, -2, -1)) - y.amin(dim=(-3, -2, -1))).clamp_min(1e-3)

    def crossings(g):  # mean number of crossings of the mean level along the last axis
        above = g > g.mean(dim=-1, keepdim=True)
        return (above[..., 1:] != above[..., :-1]).float().sum(dim=-1).mean(dim=-1)

    return {
        "mean": mean,
        "mean^2": mean ** 2,
        "channel std": y.std(dim=(-2, -1)).mean(dim=-1),
        "grey": (y.amax(dim=-3) - y.amin(dim=-3)).amax(dim=(-2, -1)).lt(1e-3).float(),
        "green > red": (y[:, :, 1].mean(dim=(-2, -1)) > y[:, :, 0].mean(dim=(-2, -1))).float(),
        "flipped": (gray[..., half:].mean(dim=(-2, -1)) < gray[..., :half].mean(dim=(-2, -1))).float(),
        "crossings x": crossings(gray),
        "crossings y": crossings(gray.transpose(-2, -1)),
        "gradient energy": dx.square().mean(dim=(-3, -2, -1)),
        "sharpness": dx.abs().amax(dim=(-3, -2, -1)) / rng,
    }


# The test images on which each statistic is informative (0 ramp, 1 red, 2 checker, 3 shapes).
STAT_IMAGES = {
    "mean": [0, 1, 2, 3],
    "mean^2": [0, 1, 2, 3],      # with "mean": the spread of brightness over draws
    "channel std": [0, 2, 3],    # contrast and crop extent
    "grey": [1, 3],              # RandomGrayscale (saturation >= 0.6 never greys these)
    "green > red": [1, 3],       # the hue range
    "flipped": [0],              # the ramp's bright side moves left only by a flip
    "crossings x": [2],          # checker cells in view: crop width and height,
    "crossings y": [2],          # whatever the colour ops do
    "gradient energy": [2, 3],   # crop zoom, contrast and blur
    "sharpness": [2, 3],         # steepest step over the range: blur, not brightness
}


def _z_scores(a: dict, b: dict, stat_images=STAT_IMAGES) -> dict:
    """Welch z of the difference in mean of each statistic on its images -> {name: (n,)}."""
    out = {}
    for key, images in stat_images.items():
        sa, sb = a[key][:, images], b[key][:, images]
        diff = sa.mean(0) - sb.mean(0)
        se = (sa.var(0) / len(sa) + sb.var(0) / len(sb)).sqrt()
        # a statistic constant in both samples agrees only if the constants are equal
        out[key] = torch.where(se > 0, diff / se.clamp_min(1e-12), diff.abs() * 1e6)
    return out


def _worst(z: dict) -> float:
    return max(v.abs().max().item() for v in z.values())


def _describe(z: dict) -> str:
    return "; ".join(f"{k}: {np.round(v.numpy(), 1).tolist()}" for k, v in z.items())


_CACHE = {}


def _cached(key, fn):
    if key not in _CACHE:
        _CACHE[key] = fn()
    return _CACHE[key]


def _augment(name: str, changes: dict) -> BatchAugment:
    aug = BatchAugment(name, SIZE)
    for attr, value in changes.items():
        assert hasattr(aug, attr)
        setattr(aug, attr, value)
    return aug


def _seed_stats(name: str) -> dict:
    return _cached(("seed", name), lambda: _stats(_seed_outputs(_seed_transform(name), PILS, DRAWS)))


def _our_stats(name: str, **changes) -> dict:
    return _cached(("ours", name, repr(sorted(changes.items()))),
                   lambda: _stats(_our_outputs(_augment(name, changes), IMAGES, DRAWS)))


CROP_STATS = {"crossings x": [0], "crossings y": [0]}


def _seed_crop_stats() -> dict:
    tf = T.Compose([T.RandomResizedCrop(SIZE, scale=(0.2, 1.0)), T.ToTensor()])
    return _cached("seed crop", lambda: _stats(_seed_outputs(tf, PILS[2:3], CROP_DRAWS)))


def _our_crop_stats(name: str, **changes) -> dict:
    return _cached(("ours crop", name, repr(sorted(changes.items()))),
                   lambda: _stats(_our_outputs(_augment(name, changes), IMAGES[2:3], CROP_DRAWS)))


# --------------------------------------------------------------------------- API

def test_bad_name_lists_allowed_values():
    with pytest.raises(ValueError) as err:
        BatchAugment("simclr")
    message = str(err.value)
    assert "\n" not in message and all(name in message for name in PIPELINES)


@pytest.mark.parametrize("name", PIPELINES)
@pytest.mark.parametrize("shape", [(5, 3, 32, 32), (4, 3, 20, 48), (3, 3, 64, 64)])
def test_shape_dtype_range_and_input_untouched(name, shape):
    x = torch.rand(shape)
    before = x.clone()
    y = BatchAugment(name, size=24)(x, torch.Generator().manual_seed(0))
    assert y.shape == (shape[0], 3, 24, 24) and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", PIPELINES)
def test_determinism(name):
    aug, x = BatchAugment(name), torch.rand(16, 3, 32, 32)
    a = aug(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(8)))
    torch.manual_seed(3)
    b = aug(x)
    torch.manual_seed(3)
    assert torch.equal(b, aug(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", PIPELINES)
def test_cuda_device_preserved_and_same_distribution(name):
    aug = BatchAugment(name)
    x = torch.rand(64, 3, 32, 32, device="cuda")
    y = aug(x, torch.Generator(device="cuda").manual_seed(0))
    assert y.device == x.device and y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert torch.equal(y, aug(x, torch.Generator(device="cuda").manual_seed(0)))
    g = torch.Generator(device="cuda").manual_seed(0)
    gpu = aug(IMAGES.cuda().repeat(DRAWS, 1, 1, 1), g).cpu().view(DRAWS, 4, 3, SIZE, SIZE)
    z = _z_scores(_stats(gpu), _seed_stats(name))
    assert _worst(z) < Z_OK, _describe(z)


def test_resize_batch():
    x = torch.rand(2, 3, 32, 32)
    assert resize_batch(x, 32) is x
    y = resize_batch(torch.rand(2, 3, 64, 48), 32)
    assert y.shape == (2, 3, 32, 32) and y.min() >= 0 and y.max() <= 1
    assert torch.allclose(resize_batch(torch.full((1, 3, 40, 40), 0.3), 32), torch.full((1, 3, 32, 32), 0.3))


# --------------------------------------------------------------------------- batched ops vs torchvision

def _colour_images(n=6, h=9, w=13):
    x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(0))
    x[0, :, :3] = 0.4                                # grey pixels
    x[1, 1] = x[1, 0]                                # red and green tie
    x[2, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    x[2, :, 0, 1] = 0.0                              # black
    return x


def test_hsv_round_trip_and_hue_shift_match_torchvision():
    x = _colour_images()
    hsv = A.rgb_to_hsv(x)
    assert hsv.shape == x.shape and hsv[:, 0].min() >= 0 and hsv[:, 0].max() < 1
    assert (A.hsv_to_rgb(hsv) - x).abs().max() < 1e-5
    hue = torch.tensor([-0.5, -0.4, -0.1, 0.0, 0.25, 0.5])
    ours = A.adjust_hue(x, hue)
    ref = torch.stack([TF.adjust_hue(img, float(h)) for img, h in zip(x, hue)])
    assert (ours - ref).abs().max() < 1e-5


def test_color_jitter_matches_torchvision_functional():
    x = _colour_images()
    g = torch.Generator().manual_seed(1)
    b, c, s = (0.6 + 0.8 * torch.rand(6, generator=g) for _ in range(3))
    h = 0.8 * torch.rand(6, generator=g) - 0.4
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(6)])
    ours = A.color_jitter(x, b, c, s, h, order)
    for i in range(6):
        ops = [lambda y: TF.adjust_brightness(y, float(b[i])), lambda y: TF.adjust_contrast(y, float(c[i])),
               lambda y: TF.adjust_saturation(y, float(s[i])), lambda y: TF.adjust_hue(y, float(h[i]))]
        ref = x[i]
        for op in order[i].tolist():
            ref = ops[op](ref)
        # torchvision's tensor path weighs red 0.2989; PIL and this module 0.299
        assert (ours[i] - ref).abs().max() < 1e-3


@pytest.mark.parametrize("in_size,out_size", [(32, 32), (32, 12), (20, 32)])
def test_resized_crop_matches_torchvision(in_size, out_size):
    h, w = in_size, in_size + 5
    x = torch.rand(8, 3, h, w, generator=torch.Generator().manual_seed(2))
    boxes = A.sample_crop_boxes(8, h, w, generator=torch.Generator().manual_seed(3))
    assert ((boxes[:, 2] >= 1) & (boxes[:, 0] >= 0) & (boxes[:, 0] + boxes[:, 2] <= h)).all()
    assert ((boxes[:, 3] >= 1) & (boxes[:, 1] >= 0) & (boxes[:, 1] + boxes[:, 3] <= w)).all()
    ours = A.resized_crop(x, boxes, out_size)
    ref = torch.stack([TF.resized_crop(img, *box.tolist(), [out_size, out_size], antialias=True)
                       for img, box in zip(x, boxes)])
    assert (ours - ref).abs().max() < 1e-5


@pytest.mark.parametrize("h,w", [(32, 32), (16, 40)])
def test_crop_boxes_match_torchvision_get_params(h, w):
    ours = A.sample_crop_boxes(20000, h, w, generator=torch.Generator().manual_seed(4)).double()
    torch.manual_seed(5)
    ref = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(3, h, w), [0.2, 1.0], [3 / 4, 4 / 3])
                        for _ in range(3000)]).double()

    def box_stats(b):  # each (n, 1): area, log aspect ratio, relative offsets
        hb, wb = b[:, 2], b[:, 3]
        return {"area": hb * wb / (h * w), "log ratio": (wb / hb).log(),
                "i": b[:, 0] / (h - hb).clamp_min(1), "j": b[:, 1] / (w - wb).clamp_min(1)}

    a, r = box_stats(ours), box_stats(ref)
    squares = {k: v ** 2 for k, v in a.items()}, {k: v ** 2 for k, v in r.items()}
    z = _z_scores({k: v[:, None] for k, v in a.items()}, {k: v[:, None] for k, v in r.items()},
                  {k: [0] for k in a})
    z2 = _z_scores({k: v[:, None] for k, v in squares[0].items()}, {k: v[:, None] for k, v in squares[1].items()},
                   {k: [0] for k in a})
    assert max(_worst(z), _worst(z2)) < Z_OK, _describe(z) + " | squares: " + _describe(z2)


def test_gaussian_blur_matches_torchvision_and_pil():
    x = _colour_images(4, 24, 24)
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    ours = A.gaussian_blur(x, sigma, radius=6)
    ref = torch.stack([TF.gaussian_blur(img, [13, 13], [float(s)] * 2) for img, s in zip(x, sigma)])
    # torchvision pads by reflection; PIL and this module extend the edge pixels
    assert (ours - ref)[..., 6:-6, 6:-6].abs().max() < 1e-5
    checker = IMAGES[2:3].expand(4, -1, -1, -1)
    for img, s in zip(A.gaussian_blur(checker, sigma, radius=6), sigma):
        approx = TF.to_tensor(PILS[2].filter(ImageFilter.GaussianBlur(radius=float(s))))
        assert (img - approx).abs().mean() < 0.01  # PIL approximates the Gaussian by box blurs


# --------------------------------------------------------------------------- statistics vs the seed

@pytest.mark.parametrize("name", PIPELINES)
def test_statistics_match_seed_transforms(name):
    z = _z_scores(_our_stats(name), _seed_stats(name))
    assert _worst(z) < Z_OK, _describe(z)


@pytest.mark.parametrize("name,changes,stat", [
    ("normal", dict(flip_p=0.5), "flipped"),
    ("normal", dict(hue=0.1), "green > red"),
    ("normal", dict(gray_p=0.0), "grey"),
    ("aug+", dict(flip_p=0.0), "flipped"),
    ("aug+", dict(hue=0.4), "green > red"),
    ("aug+", dict(blur_p=0.0), "sharpness"),
])
def test_statistics_catch_broken_variants(name, changes, stat):
    z = _z_scores(_our_stats(name, **changes), _seed_stats(name))
    assert z[stat].abs().max() > Z_BAD, _describe(z)


@pytest.mark.parametrize("name", PIPELINES)
def test_crop_extent_matches_seed(name):
    z = _z_scores(_our_crop_stats(name), _seed_crop_stats(), CROP_STATS)
    assert _worst(z) < Z_OK, _describe(z)


@pytest.mark.parametrize("changes", [dict(scale=(0.08, 1.0)), dict(scale=(0.35, 1.0))])
def test_crop_extent_catches_wrong_scale(changes):
    z = _z_scores(_our_crop_stats("normal", **changes), _seed_crop_stats(), CROP_STATS)
    assert _worst(z) > Z_BAD, _describe(z)


def test_flip_and_blur_only_in_aug_plus():
    normal, plus = _our_stats("normal"), _our_stats("aug+")
    assert normal["flipped"][:, 0].sum() == 0
    assert abs(plus["flipped"][:, 0].mean().item() - 0.5) < 0.08
    sharp = _our_stats("aug+", blur_p=0.0)
    for image in (2, 3):  # checker, shapes: blur lowers the gradient energy
        assert plus["gradient energy"][:, image].mean() < 0.8 * sharp["gradient energy"][:, image].mean()
        assert plus["sharpness"][:, image].mean() < 0.85 * sharp["sharpness"][:, image].mean()
