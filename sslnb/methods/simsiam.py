"""SimSiam (Chen & He, 2021): BYOL without the moving-average target. Not part of the seed study.

One network f (backbone -> projector, BatchNorm on every layer including the output) sees both views; a
predictor h (a bottleneck MLP, BatchNorm on its hidden layer) maps each view's projection towards the
other view's, which enters the loss behind a stop-gradient:

    L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2,   D(p, z) = -cos(p, z)   (mean over the batch)

Where BYOL's target is a slow average of the online network (and, in the seed, a separately initialised
one), SimSiam's is the online network itself, so the stop-gradient alone keeps it from collapsing (the
paper's section 4). The heads follow the paper where the seed has nothing to follow: BatchNorm on the
projector's output, and a predictor whose hidden layer is a quarter of its output (2048 -> 512 -> 2048 on
CIFAR; appendix D of the paper, as we read it). ``bn_code``'s first two bits switch the projector's hidden
BatchNorm and the predictor's, as BN1 and BN2 do for BYOL; the third has no branch to act on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..models import MLP, Encoder, backbone_from_config
from .base import Method


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The symmetric negative cosine of the paper's Algorithm 1: predictions p (B, d) against the other
    view's projections z (B, d), which are detached (no gradient reaches them). In [-1, 1]; -1 when every
    prediction points exactly at its target."""
    def d(p, z):
        return -F.cosine_similarity(p, z.detach(), dim=1).mean()

    return d(p1, z2) / 2 + d(p2, z1) / 2


class SimSiam(Method):
    name = "simsiam"
    # The predictor's bottleneck: a quarter of the projection size. The paper's CIFAR run (appendix D):
    # 2048-d projections, batch 512, SGD lr 0.03 x 512/256, weight decay 5e-4, cosine schedule, 800 epochs.
    presets = {
        "paper": dict(proj_dim=2048, proj_hidden=2048, pred_hidden=512, lr=0.06, lr_schedule="cos", epochs=800),
        "cpu": dict(pred_hidden=64), "laptop": dict(pred_hidden=64), "smoke": dict(pred_hidden=8),
    }
    n_views = 2
    forwards = 2  # both views through one network

    @classmethod
    def run_tag(cls, cfg: Config) -> list[str]:
        return [f"bn{cfg.bn_code[:2]}"]

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        backbone = backbone_from_config(cfg)
        hidden = cfg.proj_hidden or backbone.out_dim
        self.encoder = Encoder(backbone, MLP(backbone.out_dim, hidden, cfg.proj_dim, cfg.bn1, cfg.bn_affine,
                                             cfg.bn_groups, out_bn=True))
        self.predictor = MLP(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim, cfg.bn2, cfg.bn_affine, cfg.bn_groups)

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) -> h (B, D) last-conv feature, z (B, proj_dim) projection."""
        return self.encoder(x)

    def trainable_parameters(self):
        return [{"params": list(self.encoder.parameters())},
                {"params": list(self.predictor.parameters()), "lr_mult": self.cfg.pred_lr_mult}]

    def outputs(self, views) -> dict:
        """Each view's projection ``z`` and prediction ``p`` (lists of (B, proj_dim) tensors)."""
        z = self.forward_views(self.encoder, views)
        return {"z": z, "p": [self.predictor(zi) for zi in z]}

    def objective(self, out: dict, y=None, idx=None):
        (p1, p2), (z1, z2) = out["p"], out["z"]
        loss = simsiam_loss(p1, p2, z1, z2)
        z_std = F.normalize(z1.detach(), dim=1).std(dim=0).mean()  # collapse diagnostic, as BYOL's
        return loss, {"loss": loss.detach(), "z_std": z_std}
