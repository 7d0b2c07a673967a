"""Instance discrimination with a memory bank (Wu et al., 2018), as the seed ran it (seed-protocol 3a).

Every training image is its own class. One augmented view per image goes through the backbone and a
head to a 128-d feature f; the loss is a softmax over all N memory-bank vectors (or the paper's NCE with
K sampled negatives), whose positive is the image's own, slightly stale, bank entry. After the optimiser
step the bank rows of the batch move towards the features computed before the step.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import dist
from ..config import Config
from ..losses import insdis_nce, insdis_softmax, nce_normaliser
from ..memory_bank import MemoryBank
from ..models import MLP, Encoder, backbone_from_config
from .base import Method

FEATURE_DIM = 128  # the seed's low_dim


def head(cfg: Config, in_dim: int) -> nn.Module:
    """The seed's heads: Linear D -> 128 (default), or D -> D -> BN -> ReLU -> 128 (``--nonlinearhead 1``)."""
    if cfg.insdis_head == "mlp":
        return MLP(in_dim, cfg.proj_hidden or in_dim, FEATURE_DIM, True, cfg.bn_affine, cfg.bn_groups)
    return nn.Linear(in_dim, FEATURE_DIM)


class InsDis(Method):
    name = "insdis"
    # The seed's InsDis command (run.py): batch 128 on 4 GPUs, lr 0.03, the README's t = 0.30, and the
    # `normal` pipeline (InsDis never had flips). The small presets keep the seed's learning rate; NCE's K
    # keeps the paper's share of the data (4096 of 50,000).
    presets = {"paper": dict(batch_size=128, lr=0.03, temperature=0.3, augment="normal"),
               "cpu": dict(lr=0.03, nce_k=256), "laptop": dict(lr=0.03, nce_k=256), "smoke": dict(nce_k=32)}
    n_views = 1
    after_step_on = "run"  # the memory bank

    @classmethod
    def run_tag(cls, cfg: Config) -> list[str]:
        return [cfg.insdis_loss + ("-mlp" if cfg.insdis_head == "mlp" else ""), f"t{cfg.temperature:g}"]

    @classmethod
    def grid_refusal(cls, cfg: Config) -> str | None:
        if cfg.insdis_loss == "nce":
            return "InsDis with NCE draws from the global random stream"
        return None

    @classmethod
    def build(cls, cfg: Config, num_classes: int, num_train: int) -> "InsDis":
        return cls(cfg, num_train)

    def __init__(self, cfg: Config, num_train: int):
        super().__init__()
        self.cfg = cfg
        backbone = backbone_from_config(cfg)
        self.encoder = Encoder(backbone, head(cfg, backbone.out_dim))
        self.bank = MemoryBank(num_train, FEATURE_DIM, cfg.bank_momentum)
        self.register_buffer("nce_z", torch.zeros(()))  # NCE's normaliser, fixed at the first step
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def embed(self, x: torch.Tensor):
        """x (B, 3, H, W) -> h (B, D) last conv, z (B, 128) head output ("FC", not normalised)."""
        return self.encoder(x)

    def trainable_parameters(self):
        return list(self.encoder.parameters())

    def knn_banks(self) -> dict[str, torch.Tensor]:
        """The seed's monitor: test features against the memory bank (``knn_bank`` in the records)."""
        return {"knn_bank": self.bank.vectors}

    def outputs(self, views) -> dict:
        """The network part of a step: the features ``f`` (B, 128) of the one view."""
        return {"f": self.encoder(views[0])[1]}

    def objective(self, out: dict, y=None, idx=None):
        f = out["f"]
        bank = self.bank.vectors
        if self.cfg.insdis_loss == "nce":
            neg = torch.randint(len(bank), (len(f), self.cfg.nce_k), device=f.device)
            if self.nce_z <= 0:
                self.nce_z.fill_(dist.mean(nce_normaliser(f, bank, neg, self.cfg.temperature)))
            loss = insdis_nce(f, bank, idx, neg, self.cfg.temperature, self.nce_z)
        else:
            loss = insdis_softmax(f, bank, idx, self.cfg.temperature)
        self._pending = (idx, f.detach().float())  # the bank is updated after the step, as in the seed
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        if self._pending is not None:  # every process applies every process's rows: banks stay equal
            idx, f = self._pending
            self.bank.update(dist.gather(idx), dist.gather(f))
            self._pending = None
