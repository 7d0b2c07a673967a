"""The seed study's two training augmentation pipelines as batched tensor ops.

The seed (WangFeng18/UnsupervisedLearningCodes, ``augmentation.py``) applies
torchvision v1 transforms image by image to 32x32 PIL images.  Here each
pipeline runs on a whole ``(B, 3, H, W)`` float batch in [0, 1] on any device,
with every per-image random draw taken as a tensor from one generator, and
reproduces the per-image semantics in distribution:

``"normal"``  RandomResizedCrop(size, scale=(0.2, 1)) -> ColorJitter(0.4, 0.4,
              0.4, 0.4) always -> RandomGrayscale(0.2).  No flip, no blur.
``"aug+"``    RandomResizedCrop(size, scale=(0.2, 1)) -> ColorJitter(0.4, 0.4,
              0.4, 0.1) with p=0.8 -> RandomGrayscale(0.2) -> GaussianBlur
              sigma~U(0.1, 2) with p=0.5 -> RandomHorizontalFlip(0.5).

Normalisation is not done here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PIPELINES = ("normal", "aug+")

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


# --------------------------------------------------------------------------- crop

def sample_crop_boxes(batch: int, height: int, width: int, scale=(0.2, 1.0),
                      ratio=(3 / 4, 4 / 3), generator: torch.Generator | None = None,
                      device=None, attempts: int = 10) -> torch.Tensor:
    """RandomResizedCrop.get_params for a whole batch -> (B, 4) long tensor of (i, j, h, w).

    Like torchvision: area fraction ~ U(scale), log aspect ratio ~ U(log ratio),
    sides rounded, first of `attempts` tries that fits wins, else a centre crop of
    the whole image with the ratio clamped into range.
    """
    u = torch.rand(2, batch, attempts, generator=generator, device=device)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting try
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


def _axis_coords(start: torch.Tensor, length: torch.Tensor, size: int, full: int) -> torch.Tensor:
    """(B,) crop start/length in pixels -> (B, size) normalised grid_sample coordinates."""
    k = torch.arange(size, device=start.device, dtype=torch.float32) + 0.5
    start, length = start.float()[:, None], length.float()[:, None]
    src = start + k * (length / size) - 0.5  # half-pixel centres, as interpolate(align_corners=False)
    # Clamping to the crop (not the image) matches crop-then-resize at the crop's border.
    src = torch.minimum(torch.maximum(src, start), start + length - 1)
    return (2 * src + 1) / full - 1


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop box (i, j, h, w) of each image and resize it bilinearly to (size, size).

    x: (B, C, H, W) float; boxes: (B, 4) integer (i, j, h, w) -> (B, C, size, size).
    Equals torchvision's crop + bilinear resize whenever the crop is upsampled (always
    the case for 32x32 inputs and size 32); crops larger than `size` are resampled
    without antialiasing.
    """
    B, _, H, W = x.shape
    gx = _axis_coords(boxes[:, 1], boxes[:, 3], size, W)
    gy = _axis_coords(boxes[:, 0], boxes[:, 2], size, H)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False)


# --------------------------------------------------------------------------- colour

def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB -> (..., 1, H, W) luma."""
    r, g, b = x.unbind(dim=-3)
    return (r * _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(-3)


def _hue_max_chroma(x: torch.Tensor):
    """(..., 3, H, W) RGB -> hue in sextants (..., H, W) in [-1, 5], max and chroma (..., H, W)."""
    r, g, b = x.unbind(dim=-3)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = 1.0 / torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    is_r, is_g = maxc == r, maxc == g
    h6 = torch.where(is_r, (g - b) * inv, torch.where(is_g, 2.0 + (b - r) * inv, 4.0 + (r - g) * inv))
    return h6, maxc, chroma


def _rgb_from_hue(h6: torch.Tensor, maxc: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Inverse of `_hue_max_chroma` (any real h6, in sextants) -> (..., 3, H, W) RGB."""
    n = torch.tensor([5.0, 3.0, 1.0], device=h6.device, dtype=h6.dtype).view(3, 1, 1)  # R, G, B
    k = torch.remainder(h6.unsqueeze(-3) + n, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc.unsqueeze(-3) - chroma.unsqueeze(-3) * ramp


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> (..., 3, H, W) HSV, hue in [0, 1) (torchvision's formula)."""
    h6, maxc, chroma = _hue_max_chroma(x)
    s = chroma / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    return torch.stack((torch.fmod(h6 / 6.0 + 1.0, 1.0), s, maxc), dim=-3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) HSV with hue in [0, 1) -> (..., 3, H, W) RGB."""
    h, s, v = x.unbind(dim=-3)
    return _rgb_from_hue(h * 6.0, v, v * s)


def adjust_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """x: (B, 3, H, W) RGB; hue: (B,) shift as a fraction of the hue circle -> (B, 3, H, W).

    Same result as rgb_to_hsv -> shift -> hsv_to_rgb (value and chroma are unchanged
    by a hue rotation, so saturation never needs to be formed).
    """
    h6, maxc, chroma = _hue_max_chroma(x)
    return _rgb_from_hue(h6 + 6.0 * hue.to(x.dtype)[:, None, None], maxc, chroma)


def color_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                 saturation: torch.Tensor, hue: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision ColorJitter with per-image factors and per-image op order.

    x: (B, 3, H, W) in [0, 1]; brightness, contrast, saturation: (B,) factors (1 = no-op);
    hue: (B,) shift (0 = no-op); order: (B, 4) a permutation of 0..3 per image, ops
    0 brightness, 1 contrast, 2 saturation, 3 hue, applied left to right -> (B, 3, H, W).
    Brightness, contrast and saturation are each a clamped blend
    factor * x + (1 - factor) * other with other = 0, the grey mean or the grey image.
    """
    B = x.shape[0]
    x = x.clone()  # updated in place below
    one = torch.ones_like(brightness)
    for k in range(4):
        op = order[:, k]
        f = torch.where(op == 0, brightness, torch.where(op == 1, contrast,
                        torch.where(op == 2, saturation, one)))
        gray = grayscale(x)
        other = torch.where((op == 2).view(B, 1, 1, 1), gray,
                            gray.mean(dim=(-2, -1), keepdim=True) * (op == 1).to(x.dtype).view(B, 1, 1, 1))
        # lerp(other, x, f) = f * x + (1 - f) * other, and exactly x where f == 1.
        x = torch.lerp(other, x, f.to(x.dtype).view(B, 1, 1, 1)).clamp_(0.0, 1.0)
        # Hue is the expensive op: run it only on the images whose step k is a hue shift.
        idx = ((op == 3) & (hue != 0)).nonzero().squeeze(1)
        if idx.numel():
            x.index_copy_(0, idx, adjust_hue(x.index_select(0, idx), hue.index_select(0, idx)))
    return x


# --------------------------------------------------------------------------- blur

def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Per-image separable Gaussian blur with replicate padding.

    x: (B, C, H, W); sigma: (B,) in pixels, <= 0 means no blur -> (B, C, H, W).
    The kernel radius defaults to ceil(3 * max sigma).  The seed used PIL's
    ImageFilter.GaussianBlur(radius=sigma), which approximates this Gaussian with
    three extended box blurs and extends edge pixels; here the Gaussian is exact.
    """
    B, C, H, W = x.shape
    sigma = sigma.to(torch.float32)
    if radius is None:
        radius = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    s = sigma.clamp_min(1e-6)[:, None]
    kernel = torch.exp(-0.5 * (t / s) ** 2)
    delta = (t == 0).float().expand_as(kernel)
    kernel = torch.where(sigma[:, None] > 0, kernel, delta)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.dtype)
    kernel = kernel.repeat_interleave(C, dim=0)  # (B*C, K): one kernel per channel group
    y = x.reshape(1, B * C, H, W)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"),
                 kernel[:, None, None, :], groups=B * C)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"),
                 kernel[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


# --------------------------------------------------------------------------- pipelines

class BatchAugment:
    """One of the seed's pipelines applied to a whole batch at once.

    The pipeline's parameters are plain attributes (scale, ratio, brightness,
    contrast, saturation, hue, jitter_p, gray_p, blur_p, blur_sigma, flip_p).
    """

    def __init__(self, name: str, size: int = 32):
        if name not in _CONFIGS:
            raise ValueError(f"unknown augmentation pipeline {name!r}; allowed: {', '.join(PIPELINES)}")
        self.name = name
        self.size = int(size)
        for key, value in _CONFIGS[name].items():
            setattr(self, key, value)

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

        def factor(spread, applied):  # U[max(0, 1 - spread), 1 + spread], 1 where not applied
            f = max(0.0, 1 - spread) + (1 + spread - max(0.0, 1 - spread)) * rand(B)
            return torch.where(applied, f, torch.ones_like(f))

        boxes = sample_crop_boxes(B, H, W, self.scale, self.ratio, generator, dev)
        x = resized_crop(x, boxes, self.size)

        applied = rand(B) < self.jitter_p
        b, c, s = (factor(v, applied) for v in (self.brightness, self.contrast, self.saturation))
        h = torch.where(applied, self.hue * (2 * rand(B) - 1), torch.zeros(B, device=dev))
        order = rand(B, 4).argsort(dim=1)  # a uniform random permutation per image
        x = color_jitter(x, b, c, s, h, order)

        gray = (rand(B) < self.gray_p)[:, None, None, None]
        x = torch.where(gray, grayscale(x).expand_as(x), x)

        if self.blur_p > 0:
            lo, hi = self.blur_sigma
            sigma = lo + (hi - lo) * rand(B)
            sigma = torch.where(rand(B) < self.blur_p, sigma, torch.zeros_like(sigma))
            x = gaussian_blur(x, sigma, radius=math.ceil(3 * hi))

        if self.flip_p > 0:
            flip = (rand(B) < self.flip_p)[:, None, None, None]
            x = torch.where(flip, x.flip(-1), x)
        return x.clamp_(0.0, 1.0)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Test-time transform: (B,3,H,W) -> (B,3,size,size); returns x unchanged when H == W == size.
    Otherwise a bilinear resize with antialiasing (aspect ratio is not kept)."""
    if x.shape[-2] == size and x.shape[-1] == size:
        return x
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.clamp_(0.0, 1.0)
