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


def member_rates(opt: torch.optim.Optimizer, member_opts: list[torch.optim.Optimizer]) -> list[torch.Tensor] | None:
    """For a grid's batched optimiser ``opt``: each member's current learning rate in every parameter group,
    read from the member's own optimiser (``member_opts[g]``, whose rates its own config's schedule sets),
    as one (G,) float64 tensor per group; None when every member has ``opt``'s rate."""
    rates = [[mo.param_groups[i]["lr"] for mo in member_opts] for i in range(len(opt.param_groups))]
    if all(r == [group["lr"]] * len(r) for r, group in zip(rates, opt.param_groups)):
        return None
    return [torch.tensor(r, dtype=torch.float64) for r in rates]


@torch.no_grad()
def step_with_rates(opt: torch.optim.Optimizer, rates: list[torch.Tensor] | None) -> None:
    """``opt.step()`` where member g of a grid's batched parameters moves at its own rate ``rates[i][g]``
    (parameter group i; member g owns block g of each parameter's first axis). SGD with momentum only:
    the step runs at rate 0, which updates each momentum buffer exactly as usual and leaves the
    parameters where they are, then each member's block moves by its rate times its buffer, which is
    SGD's update (``p -= lr * buf``)."""
    if rates is None:
        opt.step()
        return
    if not isinstance(opt, torch.optim.SGD) or any(g["momentum"] == 0 or g["nesterov"] for g in opt.param_groups):
        raise ValueError("per-run learning rates in a grid need SGD with momentum (and without Nesterov)")
    kept = [group["lr"] for group in opt.param_groups]
    for group in opt.param_groups:
        group["lr"] = 0.0
    opt.step()
    for group, lr, rate in zip(opt.param_groups, kept, rates):
        group["lr"] = lr
        for p in group["params"]:
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if p.grad is None or buf is None:
                continue
            w = rate.to(p.dtype).repeat_interleave(p.shape[0] // len(rate)).view(-1, *([1] * (p.dim() - 1)))
            p.sub_(buf * w)
