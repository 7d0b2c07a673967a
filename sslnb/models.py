"""CIFAR ResNets (the seed's ``models/resnet_cifar.py`` semantics) and the MLP heads.

The backbone is the common CIFAR ResNet: a 3x3 stride-1 stem with no max-pool, four stages of
``width``, 2*``width``, 4*``width``, 8*``width`` planes at strides 1/2/2/2, then global average pooling
(the seed's "layer 6" or "last conv" feature: 512-d for ResNet-18 and 2048-d for ResNet-50 at width 64).
PyTorch's default initialisation is kept, as in the seed's results code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm import GhostBatchNorm1d, GhostBatchNorm2d


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = GhostBatchNorm2d(planes, groups)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = GhostBatchNorm2d(planes, groups)
        self.shortcut = _shortcut(in_planes, planes, stride, groups)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = GhostBatchNorm2d(planes, groups)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3 (v1.5)
        self.bn2 = GhostBatchNorm2d(planes, groups)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = GhostBatchNorm2d(4 * planes, groups)
        self.shortcut = _shortcut(in_planes, 4 * planes, stride, groups)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int, groups: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), GhostBatchNorm2d(out_planes, groups))


_LAYOUTS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


class CifarResNet(nn.Module):
    """CIFAR ResNet backbone. ``forward``: (B, 3, H, W) -> h (B, ``out_dim``), the pooled last conv."""

    def __init__(self, network: str = "resnet18", width: int = 64, bn_groups: int = 1):
        super().__init__()
        block, layout = _LAYOUTS[network]
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = GhostBatchNorm2d(width, bn_groups)
        stages, in_planes = [], width
        for i, n_blocks in enumerate(layout):
            planes = width * 2**i
            blocks = []
            for stride in [1 if i == 0 else 2] + [1] * (n_blocks - 1):
                blocks.append(block(in_planes, planes, stride, bn_groups))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # The seed pools with a fixed 4x4 kernel on 32x32 inputs; adaptive pooling is the same there
        # and also works for the cpu preset's 16x16 crops.
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class MLP(nn.Module):
    """Linear -> [BatchNorm1d] -> ReLU -> Linear [-> BatchNorm1d]: every head of the study.
    (B, in_dim) -> (B, out_dim).

    The layers are named ``fc1``, ``bn``, ``fc2`` (and ``out_bn``) whether or not the BNs are there, so
    that parameters of heads with and without BN can be matched by name (the seed's EMA does exactly
    that). ``out_bn`` puts a BatchNorm on the output, as SimCLR's and SimSiam's papers do after their
    projectors (the seed's heads have none).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, bn: bool = True, affine: bool = True,
                 bn_groups: int = 1, out_bn: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn = GhostBatchNorm1d(hidden_dim, bn_groups, affine=affine) if bn else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.out_bn = GhostBatchNorm1d(out_dim, bn_groups, affine=affine) if out_bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_bn(self.fc2(F.relu(self.bn(self.fc1(x)))))


class Encoder(nn.Module):
    """Backbone plus projection head. ``forward``: x (B, 3, H, W) -> (h (B, D), z (B, proj_dim))."""

    def __init__(self, backbone: CifarResNet, projector: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return h, self.projector(h)


def backbone_from_config(cfg) -> CifarResNet:
    return CifarResNet(cfg.network, cfg.width, cfg.bn_groups)
