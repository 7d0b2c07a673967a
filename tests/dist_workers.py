"""The same few optimiser steps on one process or on each of N gloo processes (tests/test_dist.py).

``steps(cfg, ...)`` builds a method from a fixed seed, gives each process its share of fixed global
batches (in rank order, as ``sslnb.train`` does) and returns what the tests compare: the loss of every
step (mean over processes), the parameters and buffers afterwards, and whether each tensor is identical
on every process. Everything runs in float64 so that one process and N processes agree to rounding.
"""

from __future__ import annotations

import torch

from sslnb import dist
from sslnb.config import METHODS, Config
from sslnb.methods import build_method
from sslnb.optim import build_optimizer
from sslnb.train import train_step

GLOBAL_BATCH, N_TRAIN, N_STEPS = 16, 64, 3


def batches(n_views: int):
    g = torch.Generator().manual_seed(123)
    for s in range(N_STEPS):
        views = [torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(n_views)]
        idx = torch.arange(s * GLOBAL_BATCH, (s + 1) * GLOBAL_BATCH) % N_TRAIN
        yield views, torch.zeros(GLOBAL_BATCH, dtype=torch.long), idx


def steps(cfg: Config) -> dict:
    world, rank = dist.world_size(), dist.rank()
    torch.manual_seed(0)
    method = build_method(cfg, 10, N_TRAIN)
    method = dist.configure_batchnorm(method, cfg.dist_bn, cfg.bn_groups).double()
    opt = build_optimizer(cfg, method.trainable_parameters())
    forward = dist.wrap(method)
    method.train()
    losses = []
    for i, (views, y, idx) in enumerate(batches(method.n_views)):
        share = lambda t: t.chunk(world)[rank]  # noqa: E731
        loss, _ = train_step(method, forward, opt, [share(v) for v in views], share(y), share(idx), (i + 1) / N_STEPS)
        losses.append(dist.mean(loss.detach()).item())
    state = {k: v.detach().clone() for k, v in method.state_dict().items()}
    same = {k: dist.same_on_all_ranks(v) for k, v in state.items()}
    return {"losses": losses, "state": state, "same": same}


SCENARIOS = {
    # name: config overrides; all start from the smoke preset of the method
    "simclr-seed-groups": dict(method="simclr", simclr_loss="seed", bn_groups=2, dist_bn="groups"),
    "simclr-standard-groups": dict(method="simclr", simclr_loss="standard", bn_groups=2, dist_bn="groups"),
    "simclr-seed-sync": dict(method="simclr", simclr_loss="seed", bn_groups=1, dist_bn="sync"),
    "simclr-seed-local-gather": dict(method="simclr", simclr_loss="seed", bn_groups=2, dist_bn="groups",
                                     simclr_gather="local"),
    "insdis": dict(method="insdis", bn_groups=2, temperature=0.1),
    "insdis-nce": dict(method="insdis", bn_groups=2, insdis_loss="nce", nce_k=16, temperature=0.1),
    "byol": dict(method="byol", bn_groups=2),
}
# Every registered method at its smoke settings (tests/test_dist.py compares each with one process): a method
# that registers itself is tested without an edit here.
for _name in METHODS:
    SCENARIOS.setdefault(_name, dict(method=_name, bn_groups=2))


def config(name: str, world_size: int = 1) -> Config:
    overrides = dict(SCENARIOS[name])
    method = overrides.pop("method")
    return Config.from_preset("smoke", method, device="cpu", batch_size=GLOBAL_BATCH, world_size=world_size,
                              **overrides)


def worker(rank: int, world: int, init_method: str, out_dir: str) -> None:
    """Entry point of each spawned process: every scenario, results saved per rank."""
    torch.set_num_threads(1)
    dist.init("cpu", rank=rank, world_size=world, init_method=init_method)
    try:
        results = {}
        for name in SCENARIOS:
            torch.manual_seed(1000 + rank)  # different RNG streams per process, as under torchrun
            results[name] = steps(config(name, world))
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.close()
