"""BatchNorm as named behaviour: ghost (split) BatchNorm for one-device runs of multi-GPU protocols.

The seed trained on 4 GPUs with ``nn.DataParallel``: every BatchNorm (backbone and heads) computed its
statistics on its own quarter of the batch, and only the replica on GPU 0 updated the running
statistics (seed-protocol section 9). :class:`GhostBatchNorm1d` / :class:`GhostBatchNorm2d` reproduce
that on one device: in training the batch is split into ``groups`` chunks (as ``torch.chunk`` splits a
DataParallel scatter), each chunk is normalised with its own mean and variance, and the running
statistics are updated from the first chunk only. With ``groups=1`` they are plain BatchNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GhostBatchNorm(nn.modules.batchnorm._BatchNorm):
    def __init__(self, num_features: int, groups: int = 1, affine: bool = True, **kwargs):
        super().__init__(num_features, affine=affine, **kwargs)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.groups == 1 or x.shape[0] < 2 * self.groups:
            return super().forward(x)
        self._check_input_dim(x)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        chunks = x.chunk(self.groups)
        out = [F.batch_norm(chunks[0], self.running_mean, self.running_var, self.weight, self.bias,
                            True, self.momentum, self.eps)]  # replica 0 keeps the running stats
        out += [F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps) for c in chunks[1:]]
        return torch.cat(out)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", groups={self.groups}"


class GhostBatchNorm1d(GhostBatchNorm):
    """BatchNorm1d over ``groups`` chunks of the batch. Input (B, C) or (B, C, L)."""

    def _check_input_dim(self, x):
        if x.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input, got {x.dim()}D")


class GhostBatchNorm2d(GhostBatchNorm):
    """BatchNorm2d over ``groups`` chunks of the batch. Input (B, C, H, W)."""

    def _check_input_dim(self, x):
        if x.dim() != 4:
            raise ValueError(f"expected 4D input, got {x.dim()}D")
