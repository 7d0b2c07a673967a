"""The optimiser and the learning-rate schedule (seed-protocol section 4)."""

from __future__ import annotations

import math

import torch

from .config import Config


def build_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay on every parameter, as the seed (no LARS, no BN exclusion);
    Adam as an option. ``params``: parameters or groups; a group's ``lr_mult`` scales its rate."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def learning_rate(cfg: Config, epoch: int) -> float:
    """The seed's per-epoch schedule: step decay at the milestones (0-based epochs), or cosine."""
    if cfg.lr_schedule == "cos":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
    return cfg.lr * cfg.lr_decay ** sum(epoch >= m for m in cfg.lr_milestones)


def set_learning_rate(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
