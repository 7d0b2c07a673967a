"""The memory bank of instance discrimination (Wu et al., 2018; the seed's ``MemoryBank_v1``).

One 128-d vector per training image, kept outside the network and refreshed with the image's newest
feature after every optimiser step. It lets a full softmax over all N images use one forward pass per
batch, at the price of negatives that are up to one epoch old.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MemoryBank(nn.Module):
    """``vectors`` (N, D), a buffer: saved in checkpoints, never trained by the optimiser.

    Initialised i.i.d. uniform on [-a, a] with ``a = 1 / sqrt(D / 3)`` (so each row's expected squared
    norm is 1) and *not* normalised, exactly as the seed did.
    """

    def __init__(self, n: int, dim: int = 128, momentum: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        a = 1 / math.sqrt(dim / 3)
        self.momentum = momentum
        self.register_buffer("vectors", torch.rand(n, dim, generator=generator) * 2 * a - a)

    @torch.no_grad()
    def update(self, idx: torch.Tensor, f: torch.Tensor) -> None:
        """``v_i <- normalise(m v_i + (1 - m) normalise(f_i))`` for the rows ``idx`` (B,); ``f`` (B, D)."""
        mixed = self.momentum * self.vectors[idx] + (1 - self.momentum) * F.normalize(f.float(), dim=1)
        self.vectors[idx] = F.normalize(mixed, dim=1)
