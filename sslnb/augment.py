"""The seed study's two training augmentation pipelines as batched tensor ops.

The seed (WangFeng18/UnsupervisedLearningCodes, ``augmentation.py``) applies
torchvision v1 transforms image by image to 32x32 PIL images.  Here each
pipeline runs on a whole ``(B, 3, H, W)`` float batch in [0, 1] on any device,
with every per-image random draw taken as a tensor from one generator, and
reproduces the per-image semantics in distribution:

``"normal"``  RandomResizedCrop(size, scale=(0.2, 1)) -> ColorJitter(0.4, 0.4,
              0.4, 0.4) always -> RandomGrayscale(0.2).  No blur, no flip.
``"aug+"``    RandomResizedCrop(size, scale=(0.2, 1)) -> ColorJitter(0.4, 0.4,
              0.4, 0.1) with p=0.8 -> RandomGrayscale(0.2) -> GaussianBlur
              sigma~U(0.1, 2) with p=0.5 -> RandomHorizontalFlip(0.5).

Normalisation is not done here.  The blur (and a crop that shrinks) is applied as
small per-image matrices with batched matmuls; with TF32 matmuls enabled on CUDA
these lose precision to about 1e-3, which is harmless for augmentation.  Ops that
only some images get (hue, grayscale, blur, flip) run on that subset only, which
costs one host sync each on CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma, as PIL's convert("L") (torchvision's tensor path uses 0.2989).
_LUMA = (0.299, 0.587, 0.114)

_COMMON = dict(
    scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
    brightness=0.4, contrast=0.4, saturation=0.4,
    gray_p=0.2, blur_sigma=(0.1, 2.0),
)
_CONFIGS = {
    "normal": dict(_COMMON, hue=0.4, jitter_p=1.0, blur_p=0.0, flip_p=0.0),
    "aug+": dict(_COMMON, hue=0.1, jitter_p=0.8, blur_p=0.5, flip_p=0.5),
}
PIPELINES = tuple(_CONFIGS)  # the one list of pipeline names (config validates ``augment`` against it)
CROP_SCALE = _COMMON["scale"]  # RandomResizedCrop's area range in both of the seed's pipelines


def seeded_generator(device, *seeds: int) -> torch.Generator:
    """A generator on ``device`` seeded from several integers (run seed, epoch, purpose, rank): the one
    source of a run's randomness in data order and augmentation, so a resumed run repeats it exactly."""
    g = torch.Generator(device=device)
    value = 0
    for s in seeds:
        value = (value * 1_000_003 + s) % (2**62)
    g.manual_seed(value)
    return g


# --------------------------------------------------------------------------- resampling

def sample_crop_boxes(batch: int, height: int, width: int, scale=(0.2, 1.0),
                      ratio=(3 / 4, 4 / 3), generator: torch.Generator | None = None,
                      device=None, attempts: int = 10) -> torch.Tensor:
    """RandomResizedCrop.get_params for a whole batch -> (B, 4) long tensor of (i, j, h, w).

    As torchvision: area fraction ~ U(scale), log aspect ratio ~ U(log ratio), sides
    rounded; the first of `attempts` tries that fits wins, else a centre crop of the
    whole image with its ratio clamped into range.
    """
    u = torch.rand(2, batch, attempts, generator=generator, device=device)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.float().argmax(dim=1, keepdim=True)  # index of the first fitting try
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)

    in_ratio = width / height
    if in_ratio < ratio[0]:
        w0, h0 = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w0, h0 = int(round(height * ratio[1])), height
    else:
        w0, h0 = width, height
    found = ok.any(dim=1)
    w = torch.where(found, w, torch.full_like(w, w0))
    h = torch.where(found, h, torch.full_like(h, h0))

    v = torch.rand(2, batch, generator=generator, device=device)
    i = torch.floor(v[0] * (height - h + 1)).long().clamp_max(height - h)
    j = torch.floor(v[1] * (width - w + 1)).long().clamp_max(width - w)
    i = torch.where(found, i, (height - h) // 2)
    j = torch.where(found, j, (width - w) // 2)
    return torch.stack((i, j, h, w), dim=1)


def _separable(x: torch.Tensor, mh: torch.Tensor, mw: torch.Tensor) -> torch.Tensor:
    """Per-image separable linear map: x (B, C, H, W), mh (B, Ho, H), mw (B, Wo, W) -> mh @ x @ mw^T."""
    B, C, H, W = x.shape
    Ho, Wo = mh.shape[1], mw.shape[1]
    y = torch.bmm(x.reshape(B, C * H, W), mw.transpose(1, 2))        # (B, C*H, Wo)
    y = y.view(B, C, H, Wo).transpose(2, 3).reshape(B, C * Wo, H)
    y = torch.bmm(y, mh.transpose(1, 2))                              # (B, C*Wo, Ho)
    return y.view(B, C, Wo, Ho).transpose(2, 3).contiguous()


def _resample_matrix(start: torch.Tensor, length: torch.Tensor, size: int, n: int,
                     dtype=torch.float32) -> torch.Tensor:
    """(B,) crop start/length along an axis of n pixels -> (B, size, n) bilinear weights.

    Triangle filter on half-pixel centres, widened by the scale when downsampling and
    renormalised inside the crop: torchvision's bilinear resize with antialias=True
    (and PIL's bilinear resize), applied to the crop.
    """
    start, length = start.to(torch.float32)[:, None, None], length.to(torch.float32)[:, None, None]
    k = torch.arange(size, device=start.device, dtype=torch.float32)[None, :, None]
    p = torch.arange(n, device=start.device, dtype=torch.float32)[None, None, :] + 0.5
    scale = length / size
    support = scale.clamp(min=1.0)
    w = (1 - ((p - start - (k + 0.5) * scale) / support).abs()).clamp_(min=0)
    w = w * ((p > start) & (p < start + length))
    return (w / w.sum(dim=2, keepdim=True)).to(dtype)


def _grid_coords(start: torch.Tensor, length: torch.Tensor, size: int, n: int) -> torch.Tensor:
    """(B,) crop start/length along an axis of n pixels -> (B, size) grid_sample coordinates."""
    k = torch.arange(size, device=start.device, dtype=torch.float32) + 0.5
    start, length = start.to(torch.float32)[:, None], length.to(torch.float32)[:, None]
    src = start + k * (length / size) - 0.5  # half-pixel centres, as F.interpolate
    src = torch.minimum(torch.maximum(src, start), start + length - 1)  # clamp to the crop
    return (2 * src + 1) / n - 1


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop box (i, j, h, w) of each image and resize it bilinearly (antialiased) to size x size.

    x: (B, C, H, W) float; boxes: (B, 4) integer (i, j, h, w) -> (B, C, size, size).
    Matches torchvision.transforms.functional.resized_crop(..., antialias=True).
    """
    B, _, H, W = x.shape
    if H <= size and W <= size:
        # Crops are only ever upsampled: plain bilinear sampling is exact, and grid_sample
        # is faster here than the matrix route.
        gx = _grid_coords(boxes[:, 1], boxes[:, 3], size, W)
        gy = _grid_coords(boxes[:, 0], boxes[:, 2], size, H)
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border",
                             align_corners=False)
    mh = _resample_matrix(boxes[:, 0], boxes[:, 2], size, H, x.dtype)
    mw = _resample_matrix(boxes[:, 1], boxes[:, 3], size, W, x.dtype)
    return _separable(x, mh, mw)


def _gaussian_matrix(sigma: torch.Tensor, n: int, radius: int, dtype=torch.float32) -> torch.Tensor:
    """(B,) sigma -> (B, n, n) 1-D Gaussian blur (taps -radius..radius) with replicated edges."""
    t = torch.arange(-radius, radius + 1, device=sigma.device)
    kernel = torch.exp(-0.5 * (t / sigma.to(torch.float32)[:, None]) ** 2)
    kernel = kernel * (kernel > 1e-20)  # no denormals: they make matmuls very slow on CPU
    kernel = kernel / kernel.sum(dim=1, keepdim=True)                          # (B, K)
    src = (torch.arange(n, device=sigma.device)[:, None] + t).clamp_(0, n - 1)  # (n, K)
    B = sigma.shape[0]
    m = torch.zeros(B, n, n, device=sigma.device)
    m.scatter_add_(2, src.expand(B, n, -1), kernel[:, None, :].expand(-1, n, -1))
    return m.to(dtype)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Per-image separable Gaussian blur with replicated edges.

    x: (B, C, H, W); sigma: (B,) > 0 in pixels -> (B, C, H, W).  The kernel radius
    defaults to ceil(3 * max sigma).  The seed used PIL's
    ImageFilter.GaussianBlur(radius=sigma), which approximates this Gaussian with
    three extended box blurs (also extending edge pixels); here it is exact.
    """
    if radius is None:
        radius = max(1, math.ceil(3 * float(sigma.max())))
    mh = _gaussian_matrix(sigma, x.shape[2], radius, x.dtype)
    mw = mh if x.shape[3] == x.shape[2] else _gaussian_matrix(sigma, x.shape[3], radius, x.dtype)
    return _separable(x, mh, mw)


# --------------------------------------------------------------------------- colour

def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB -> (..., 1, H, W) luma."""
    r, g, b = x.unbind(dim=-3)
    return (r * _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(-3)


def _hue_max_chroma(x: torch.Tensor):
    """(..., 3, H, W) RGB -> hue in sextants in [-1, 5], max, and chroma = max - min; each (..., H, W)."""
    r, g, b = x.unbind(dim=-3)
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    chroma = torch.minimum(r, g)
    torch.minimum(chroma, b, out=chroma)
    chroma.neg_().add_(maxc)
    inv = chroma.clamp_min(1e-12).reciprocal_()  # grey pixels: numerators below are 0 anyway
    # torchvision's tie order: red wins over green wins over blue.
    h6 = (r - g).mul_(inv).add_(4.0)
    h6 = torch.where(maxc == g, (b - r).mul_(inv).add_(2.0), h6)
    return torch.where(maxc == r, (g - b).mul_(inv), h6), maxc, chroma


def _rgb_from_hue(h6: torch.Tensor, maxc: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Inverse of `_hue_max_chroma`, for any real hue h6 in sextants -> (..., 3, H, W) RGB."""
    h = torch.div(h6, 6.0).floor_().mul_(-6.0).add_(h6)  # h6 mod 6, in [0, 6)
    out = torch.empty(h.shape[:-2] + (3,) + h.shape[-2:], dtype=h.dtype, device=h.device)
    for c, centre in enumerate((0.0, 2.0, 4.0)):  # hue of pure R, G, B
        d = out.select(-3, c)
        torch.sub(h, centre, out=d)
        # circular distance e = 3 - |(|d| - 3)| from the channel's own hue; the channel is
        # max - chroma * clamp(e - 1, 0, 1)  (the usual HSV -> RGB sextant formula)
        d.abs_().sub_(3.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)
        d.mul_(chroma).neg_().add_(maxc)
    return out


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> (..., 3, H, W) HSV, hue in [0, 1) (torchvision's formula)."""
    h6, maxc, chroma = _hue_max_chroma(x)
    s = chroma / maxc.clamp_min(1e-12)
    return torch.stack((torch.fmod(h6 / 6.0 + 1.0, 1.0), s, maxc), dim=-3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) HSV with hue in [0, 1) -> (..., 3, H, W) RGB."""
    h, s, v = x.unbind(dim=-3)
    return _rgb_from_hue(h * 6.0, v, v * s)


def adjust_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """x: (B, 3, H, W) RGB; hue: (B,) shift as a fraction of the hue circle -> (B, 3, H, W).

    Same as rgb_to_hsv -> shift -> hsv_to_rgb; value (max) and chroma are unchanged by
    a hue rotation, so saturation is never formed.
    """
    h6, maxc, chroma = _hue_max_chroma(x)
    return _rgb_from_hue(h6.add_(6.0 * hue.to(x.dtype)[:, None, None]), maxc, chroma)


def _apply_where(x: torch.Tensor, mask: torch.Tensor, fn) -> torch.Tensor:
    """x[mask] = fn(x[mask], indices) in place, for a (B,) bool mask; returns x."""
    idx = mask.nonzero().squeeze(1)
    if idx.numel():
        x.index_copy_(0, idx, fn(x.index_select(0, idx), idx))
    return x


def color_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                 saturation: torch.Tensor, hue: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter with per-image factors and per-image op order.

    x: (B, 3, H, W) in [0, 1]; brightness, contrast, saturation: (B,) factors (1 = no-op);
    hue: (B,) shift (0 = no-op); order: (B, 4) a permutation of 0..3 per image (ops
    0 brightness, 1 contrast, 2 saturation, 3 hue, applied left to right) -> (B, 3, H, W).
    """
    B = x.shape[0]
    one = torch.ones_like(brightness)
    for k in range(4):
        op = order[:, k]
        # Brightness, contrast and saturation are each clamp(f * x + (1 - f) * other) with
        # other = 0, the mean grey level, or the grey image; f = 1 leaves x exactly as is.
        f = torch.where(op == 0, brightness, torch.where(op == 1, contrast,
                        torch.where(op == 2, saturation, one)))
        gray = grayscale(x)
        use_con = (op == 1).to(x.dtype).view(B, 1, 1, 1)
        use_sat = (op == 2).to(x.dtype).view(B, 1, 1, 1)
        other = (gray * use_sat).add_(gray.mean(dim=(-2, -1), keepdim=True) * use_con)
        x = torch.lerp(other, x, f.to(x.dtype).view(B, 1, 1, 1)).clamp_(0.0, 1.0)
        # HSV is the costly op: run it only on the images whose step k is the hue shift.
        x = _apply_where(x, (op == 3) & (hue != 0), lambda xs, idx: adjust_hue(xs, hue[idx]))
    return x


# --------------------------------------------------------------------------- pipelines

class BatchAugment:
    """One of the seed's pipelines applied to a whole batch at once.

    The pipeline's parameters are plain attributes (scale, ratio, brightness, contrast,
    saturation, hue, jitter_p, gray_p, blur_p, blur_sigma, flip_p), so variants can be
    made by setting them after construction.
    """

    def __init__(self, name: str, size: int = 32, scale: tuple[float, float] | None = None):
        if name not in _CONFIGS:
            raise ValueError(f"unknown augmentation pipeline {name!r}; allowed: {', '.join(PIPELINES)}")
        self.name = name
        self.size = int(size)
        for key, value in _CONFIGS[name].items():
            setattr(self, key, value)
        if scale is not None:  # the crop's area range (Config.crop_scale)
            self.scale = tuple(scale)

    @classmethod
    def for_config(cls, cfg) -> "BatchAugment":
        """The pipeline a run's config names, at its image size and crop scale."""
        return cls(cfg.augment, cfg.image_size, cfg.crop_scale)

    def __repr__(self) -> str:
        return f"BatchAugment({self.name!r}, size={self.size})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: (B, 3, H, W) float in [0, 1], any device -> (B, 3, size, size) float in [0, 1], same device.
        Every random draw uses `generator` (which lives on x.device) or the global RNG when None,
        so a fixed generator seed gives identical output."""
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"expected a float (B, 3, H, W) batch, got {tuple(x.shape)} {x.dtype}")
        B, _, H, W = x.shape
        dev = x.device

        def rand(*shape):
            return torch.rand(shape, generator=generator, device=dev)

        def factor(spread, applied):  # U[max(0, 1 - spread), 1 + spread]; 1 where not applied
            lo = max(0.0, 1 - spread)
            return torch.where(applied, lo + (1 + spread - lo) * rand(B), torch.ones(B, device=dev))

        boxes = sample_crop_boxes(B, H, W, self.scale, self.ratio, generator, dev)
        x = resized_crop(x, boxes, self.size).clamp_(0.0, 1.0)

        applied = rand(B) < self.jitter_p
        b, c, s = (factor(v, applied) for v in (self.brightness, self.contrast, self.saturation))
        h = torch.where(applied, self.hue * (2 * rand(B) - 1), torch.zeros(B, device=dev))
        order = rand(B, 4).argsort(dim=1)  # a uniform random permutation per image
        x = color_jitter(x, b, c, s, h, order)

        x = _apply_where(x, rand(B) < self.gray_p, lambda xs, _: grayscale(xs).expand_as(xs))

        if self.blur_p > 0:
            lo, hi = self.blur_sigma
            sigma = lo + (hi - lo) * rand(B)
            x = _apply_where(x, rand(B) < self.blur_p,
                             lambda xs, idx: gaussian_blur(xs, sigma[idx], radius=math.ceil(3 * hi)))
        if self.flip_p > 0:
            x = _apply_where(x, rand(B) < self.flip_p, lambda xs, _: xs.flip(-1))
        return x.clamp_(0.0, 1.0)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Test-time transform: (B,3,H,W) -> (B,3,size,size); returns x unchanged when H == W == size.
    Otherwise a bilinear resize with antialiasing (the aspect ratio is not kept)."""
    if x.shape[-2] == size and x.shape[-1] == size:
        return x
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.clamp_(0.0, 1.0)
