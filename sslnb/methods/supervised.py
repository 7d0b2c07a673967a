"""Supervised reference: the same backbone trained with labels and cross-entropy.

Not part of the seed study; the book shows it beside every self-supervised result on the embedded
dataset as an upper reference for what the backbone can learn from these images.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..losses import cross_entropy
from ..models import backbone_from_config
from .base import Method


class Supervised(Method):
    name = "supervised"
    labelled = True
    # the same backbone and schedule as the self-supervised runs, with labels and cross-entropy; shorter at
    # the small presets, and no linear probe (the classifier is its own)
    presets = {"paper": dict(augment="aug+", batch_size=128, lr=0.1, probe="none"),
               "cpu": dict(epochs=15, lr_milestones=(12,), probe="none"),
               "laptop": dict(epochs=15, lr_milestones=(12,), probe="none"), "smoke": dict(probe="none")}
    n_views = 1

    @classmethod
    def build(cls, cfg: Config, num_classes: int, num_train: int) -> "Supervised":
        return cls(cfg, num_classes)

    def __init__(self, cfg: Config, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self._backbone = backbone_from_config(cfg)
        self.classifier = nn.Linear(self._backbone.out_dim, num_classes)

    @property
    def backbone(self) -> nn.Module:
        return self._backbone

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._backbone(x)
        return h, self.classifier(h)

    def predict(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(h)

    def outputs(self, views) -> dict:
        """The network part of a step: class ``logits`` (B, classes) of the one view."""
        return {"logits": self.classifier(self._backbone(views[0]))}

    def objective(self, out: dict, y, idx=None):
        logits = out["logits"]
        loss = cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "acc": (logits.argmax(1) == y).float().mean()}
