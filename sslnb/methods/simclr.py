"""SimCLR (Chen et al., 2020): two views, one network, NT-Xent over the batch.

``simclr_loss`` picks the seed's variant (``nt_xent_seed``: B - 1 cross-view negatives, each logit a
sum of two cosines) or the paper's (``nt_xent``: 2B - 2 negatives, same-view ones included). Under
several processes the negatives come from the whole global batch (``simclr_gather = global``), as in
the seed's one-process DataParallel loss.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import dist
from ..config import Config
from ..losses import nt_xent, nt_xent_seed
from ..models import MLP, Encoder, backbone_from_config
from .base import Method


class SimCLR(Method):
    name = "simclr"
    presets = {"paper": dict(batch_size=1024, lr=0.3, temperature=0.5)}  # the seed's SimCLR command
    n_views = 2
    forwards = 2

    @classmethod
    def run_tag(cls, cfg: Config) -> list[str]:
        return [cfg.simclr_loss, f"t{cfg.temperature:g}"]

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        backbone = backbone_from_config(cfg)
        d = backbone.out_dim
        # The seed's head: D -> D (+BN) -> 128.
        self.encoder = Encoder(backbone, MLP(d, cfg.proj_hidden or d, 128, cfg.bn1, cfg.bn_affine, cfg.bn_groups))

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def embed(self, x: torch.Tensor):
        return self.encoder(x)

    def outputs(self, views) -> dict:
        """The network part of a step: the projections ``z`` (B, 128) of the two views."""
        return {"z": [self.encoder(v)[1] for v in views]}

    def objective(self, out: dict, y=None, idx=None):
        z1, z2 = out["z"]
        loss_fn = nt_xent_seed if self.cfg.simclr_loss == "seed" else nt_xent
        if self.cfg.simclr_gather == "global":  # negatives from every process, gradients sent back
            loss = loss_fn(z1, z2, self.cfg.temperature, dist.gather_with_grad(z1), dist.gather_with_grad(z2),
                           first=dist.rank() * len(z1))
        else:
            loss = loss_fn(z1, z2, self.cfg.temperature)
        return loss, {"loss": loss.detach()}
