"""BYOL (Grill et al., 2020) as the seed ran it (seed-protocol sections 2 and 3c).

Online: backbone -> projector (BN1) -> predictor (BN2) -> p.  Target: backbone -> projector (BN3) -> z.
Loss: ``byol_loss(p1, z2) + byol_loss(p2, z1)``. After each optimiser step the target moves towards the
online network by an exponential moving average of the parameters whose names match.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..losses import byol_loss
from ..models import MLP, Encoder, backbone_from_config
from .base import Method


def encoder(cfg: Config, bn: bool) -> Encoder:
    """Backbone + projection MLP D -> D -> 256 (the seed's sizes; the BYOL paper uses 4096 -> 256)."""
    backbone = backbone_from_config(cfg)
    hidden = cfg.proj_hidden or backbone.out_dim
    return Encoder(backbone, MLP(backbone.out_dim, hidden, cfg.proj_dim, bn, cfg.bn_affine, cfg.bn_groups))


def predictor(cfg: Config, bn: bool) -> MLP:
    """The seed's predictor: 256 -> 256 -> 256 with BN2 (the paper's hidden size is 4096)."""
    return MLP(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim, bn, cfg.bn_affine, cfg.bn_groups)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float | torch.Tensor) -> list[str]:
    """``target <- m * target + (1 - m) * online`` for every parameter whose name and shape match.

    ``m`` is one rate, or (G,) rates for a grid's batched network (:mod:`sslnb.grouped`): member g's
    rate on its part ``g*n:(g+1)*n`` of every parameter's first axis.

    Returns the names of target parameters left untouched. When the online and target heads differ
    (BN1 != BN3) the extra BN's scale and shift have no counterpart: the seed matched by name too, so in
    code 011 the target BN3 keeps gamma=1, beta=0 for ever (seed-protocol section 2). Buffers (BN
    running statistics) are not averaged, as in the seed.
    """
    online_params = dict(online.named_parameters())
    untouched = []
    for name, t in target.named_parameters():
        o = online_params.get(name)
        if o is None or o.shape != t.shape:
            untouched.append(name)
            continue
        if torch.is_tensor(m):  # each member its own weight, broadcast over its block of the first axis
            w = (1 - m).to(t.dtype).repeat_interleave(t.shape[0] // len(m))
            t.lerp_(o, w.view(-1, *([1] * (t.dim() - 1))))
        else:
            t.lerp_(o, 1 - m)
    return untouched


class BYOL(Method):
    name = "byol"
    # the dataclass defaults are the seed's command (paper); a faster target at the small presets
    presets = {"cpu": dict(ema=0.99), "laptop": dict(ema=0.99), "smoke": dict(ema=0.9)}
    n_views = 2
    forwards = 4  # two views through the online and the target network

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.online = encoder(cfg, bn=cfg.bn1)
        self.predictor = predictor(cfg, bn=cfg.bn2)
        self.target = encoder(cfg, bn=cfg.bn3)  # built separately: a fresh random init, as in the seed
        if cfg.target_init == "copy":  # as in the BYOL paper
            ema_update(self.target, self.online, 0.0)
        self.target.requires_grad_(False)

    @classmethod
    def run_tag(cls, cfg: Config) -> list[str]:
        return [cfg.bn_code]

    @property
    def backbone(self) -> nn.Module:
        return self.online.backbone

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) -> h (B, D) last-conv feature, z (B, proj_dim) online projection ("FC")."""
        return self.online(x)

    def trainable_parameters(self):
        """Optimiser parameter groups: the online network, and the predictor (with its lr multiplier)."""
        return [{"params": list(self.online.parameters())},
                {"params": list(self.predictor.parameters()), "lr_mult": self.cfg.pred_lr_mult}]

    def outputs(self, views) -> dict:
        """The network part of a step: online predictions ``p`` and target projections ``z`` of each
        view, and the online projections ``z_online`` (lists of (B, proj_dim) tensors)."""
        z_online = self.forward_views(self.online, views)
        with torch.no_grad():  # stop-gradient: the target only provides regression targets
            z_target = self.forward_views(self.target, views)
        return {"p": [self.predictor(z) for z in z_online], "z": z_target, "z_online": z_online}

    def objective(self, out: dict, y=None, idx=None):
        (p1, p2), (z1, z2) = out["p"], out["z"]
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        # Collapse diagnostic on the training batch: per-dimension std of the normalised projection
        # (1/sqrt(d) for well-spread features, 0 for collapsed ones).
        z_std = F.normalize(out["z_online"][0].detach(), dim=1).std(dim=0).mean()
        return loss, {"loss": loss.detach(), "z_std": z_std}

    def ema_momentum(self, progress: float) -> float:
        if self.cfg.ema_schedule == "cos":  # BYOL paper: 1 - (1 - m0) (cos(pi k / K) + 1) / 2
            return 1 - (1 - self.cfg.ema) * (math.cos(math.pi * progress) + 1) / 2
        return self.cfg.ema

    @torch.no_grad()
    def after_step(self, progress: float, members: list[Method] | None = None) -> None:
        rates = {m.ema_momentum(progress) for m in members or [self]}
        if len(rates) == 1:
            ema_update(self.target, self.online, rates.pop())
        else:  # a grid of runs with different EMA rates or schedules
            ema_update(self.target, self.online,
                       torch.tensor([m.ema_momentum(progress) for m in members], dtype=torch.float64))
