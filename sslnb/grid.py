"""A grid of runs trained as one batched network: ``python -m sslnb.grid RUN_DIR [RUN_DIR ...]``.

The book's studies are grids of small runs (BatchNorm codes, seeds, temperatures). Runs whose configs
differ only in :data:`GRID_FIELDS` train in one process as one network of G groups
(:class:`sslnb.grouped.GroupedNetwork`): each step runs every network call once, batched
(``Method.outputs``), then each run's own loss (``Method.objective``, with its own config: its
temperature, its memory bank), and one optimiser step whose every operation is elementwise, so each run
moves exactly as it would alone. The G runs stay independent: the loss is their sum, and no tensor
mixes two runs. Runs with the same seed see the same batches (common random numbers: their differences
are not blurred by different data orders and augmentations); runs with different seeds each see their
own, as alone.

Each run directory is written exactly as :mod:`sslnb.train` writes it (same records, same checkpoint
format, each run resumable alone or in a grid). A run's ``epoch_s`` and ``wall_s`` are its share of the
grid's time (the grid's time / G, plus its own measurements); ``provenance.json`` names the grid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import dist
from .augment import BatchAugment
from .config import Config, ConfigError
from .data import DatasetUnavailable, batches_per_epoch, dataset_of
from .evaluate import epoch_record
from .grouped import GroupedNetwork
from .methods import build_method
from .optim import build_optimizer, learning_rate, set_learning_rate
from .rundir import (RunDirError, claim, finished, lock, provenance, read_config, read_records, verify_resume,
                     write_json_atomic)
from .train import (batch_views, check_finite, epoch_randomness, epoch_summary, finish, make_run_dir, note, use_bf16,
                    use_channels_last, write_epoch, write_metrics)

# The settings that may differ between the runs of one grid: each is either data of the step (the seed
# picks the initial weights, the data order and the augmentations; the temperature enters only the loss)
# or a per-group switch of the batched network (each BatchNorm of the BN code present or not).
GRID_FIELDS = ("seed", "bn_code", "temperature")
MAX_GRID = 8  # runs per grid by default (measured: bench/RESULTS.md, "Grids of runs")


def grid_key(cfg: Config) -> str | None:
    """Configs with equal keys can train as one grid; None for a config that trains alone (several
    processes, or InsDis's NCE, whose negatives come from the global random stream)."""
    if cfg.world_size != 1 or (cfg.method == "insdis" and cfg.insdis_loss == "nce"):
        return None
    settings = {k: v for k, v in cfg.to_dict().items() if k not in GRID_FIELDS}
    return json.dumps(settings, sort_keys=True, default=list)


def plan(pairs, max_size: int = MAX_GRID, parts: int = 1):
    """Split ``(config, run_dir)`` pairs into grids (lists of 2 to ``max_size`` pairs that
    :func:`train_grid` can train together) and the pairs that train alone, keeping their order. The runs
    of one possible grid are split into at least ``parts`` grids of near-equal size where each keeps two
    runs (so that ``parts`` processes share the work). Runs that have trained for different numbers of
    epochs are not put in one grid. Returns ``(grids, alone)``."""
    groups: dict[tuple, list] = {}
    alone = []
    pairs = [(cfg, Path(path)) for cfg, path in pairs]
    for cfg, path in pairs:
        key = grid_key(cfg)
        if key is None or max_size < 2:
            alone.append((cfg, path))
        else:
            groups.setdefault((key, _epochs_done(path)), []).append((cfg, path))
    grids = []
    for members in groups.values():
        n = len(members)
        k = max(math.ceil(n / max_size), min(parts, n // 2), 1)
        bounds = [round(i * n / k) for i in range(k + 1)]
        for chunk in (members[a:b] for a, b in zip(bounds, bounds[1:])):
            if len(chunk) > 1:
                grids.append(chunk)
            else:
                alone.extend(chunk)
    order = {path: i for i, (_, path) in enumerate(pairs)}
    return grids, sorted(alone, key=lambda pair: order[pair[1]])


def _epochs_done(path: Path) -> int:
    """Epochs a run directory has recorded (0 for a new run; a damaged file is left for the trainer's
    resume check to name)."""
    try:
        return max((r.get("epoch", 0) for r in read_records(path) if r.get("kind") == "epoch"), default=0)
    except (OSError, ValueError):
        return 0


def train_grid(cfgs: list[Config], run_dirs, progress: bool = True, wait: bool = False, on_epoch_end=None) -> list[Path]:
    """Train the runs ``cfgs`` into ``run_dirs`` as one grid (see the module docstring), resuming them
    if they hold checkpoints of the same epoch. Finished runs are left as they are. Every run directory
    is locked for the whole grid; ``on_epoch_end(epoch)`` is called once all checkpoints of the epoch
    are on disk."""
    run_dirs = [Path(p) for p in run_dirs]
    if len(cfgs) != len(run_dirs) or len(set(run_dirs)) != len(run_dirs):
        raise ConfigError("a grid needs one distinct run directory per config")
    keys = {grid_key(c) for c in cfgs}
    if None in keys or len(keys) != 1:
        raise ConfigError(f"these runs cannot train as one grid: their configs differ in more than "
                          f"{', '.join(GRID_FIELDS)}, or one of them trains alone")
    todo = [(c, p) for c, p in zip(cfgs, run_dirs) if not finished(p)]
    if not todo:
        return run_dirs
    device = dist.init(cfgs[0].device)
    if dist.world_size() != 1:
        raise ConfigError("a grid trains in one process; start it without torchrun")
    data = dataset_of(todo[0][0])  # before anything is written
    with contextlib.ExitStack() as held:
        states = []
        for cfg, path in todo:
            make_run_dir(path)
            held.enter_context(lock(path, wait, say=note))
            claim(path, cfg)
            states.append(verify_resume(path, cfg, map_location=device, say=note))
        _train_grid([c for c, _ in todo], [p for _, p in todo], device, data, states, progress, on_epoch_end)
    return run_dirs


def grid_step(grouped: GroupedNetwork, members, opt, inputs, ys, idxs, progress: float, bf16: bool = False) -> list[dict]:
    """One optimiser step of every run of a grid: the batched network's ``outputs`` once on ``inputs``
    (views (B, 3, H, W), or (B, G*3, H, W) with each run's images side by side), each run's ``objective``
    on its part with its labels ``ys[g]`` and indices ``idxs[g]``, the optimiser step on the summed
    loss, then ``after_step``. Returns each run's logs."""
    net, groups = grouped.network, grouped.groups
    with torch.autocast(inputs[0].device.type, dtype=torch.bfloat16, enabled=bf16):
        out = net.outputs(inputs)
        results = [m.objective(split_outputs(out, groups, g), y, idx)
                   for g, (m, y, idx) in enumerate(zip(members, ys, idxs))]
    opt.zero_grad(set_to_none=True)
    torch.stack([loss for loss, _ in results]).sum().backward()
    opt.step()
    grouped.pin()
    if net.after_step_on == "network":
        net.after_step(progress)
    else:
        for m in members:
            m.after_step(progress)
    return [logs for _, logs in results]


def split_outputs(out, groups: int, g: int):
    """Run g's part of a batched output: (B, G*f) tensors -> (B, f), in nested lists and dicts."""
    if torch.is_tensor(out):
        return out.reshape(out.shape[0], groups, -1)[:, g]
    if isinstance(out, dict):
        return {k: split_outputs(v, groups, g) for k, v in out.items()}
    return [split_outputs(v, groups, g) for v in out]


def _train_grid(cfgs, paths, device, data, states, progress: bool, on_epoch_end) -> None:
    G, cfg = len(cfgs), cfgs[0]
    epochs = {0 if s is None else s["epoch"] for s in states}
    if len(epochs) != 1:
        raise RunDirError("the runs of a grid must resume from the same epoch; train them separately "
                          "(python -m sslnb.train --run-dir ...)")
    members, member_opts = [], []
    for c in cfgs:
        torch.manual_seed(c.seed)  # each run's initial weights, exactly as alone
        m = build_method(c, data.num_classes, len(data.train))
        members.append(dist.configure_batchnorm(m, c.dist_bn, c.bn_groups).to(device))
        member_opts.append(build_optimizer(c, members[-1].trainable_parameters()))
    prov = {**provenance(device), "world_size": 1, "dist_bn": cfg.dist_bn,
            "bn_batch": dist.bn_batch(cfg.batch_size, cfg.bn_groups, cfg.dist_bn, 1),
            "grid": {"size": G, "runs": [p.name for p in paths]}}
    start_epoch, step, walls = 0, 0, [0.0] * G
    if states[0] is not None:
        for m, s in zip(members, states):
            m.load_state_dict(s["model"])
        start_epoch, step, walls = states[0]["epoch"], states[0]["step"], [s["wall_s"] for s in states]
        prov["resumed_at_epoch"] = start_epoch
    else:
        for m, c, p in zip(members, cfgs, paths):
            write_metrics(p / "metrics.jsonl", "w", [{"kind": "epoch", "epoch": 0, **epoch_record(m, data, c, device)}])
    seeds = sorted({c.seed for c in cfgs})
    first_of_seed = {c.seed: c for c in reversed(cfgs)}  # whose seed draws the batches of that seed
    grouped = GroupedNetwork(members, shared_input=len(seeds) == 1)
    channels_last = use_channels_last(cfg, device, groups=G)
    net = grouped.network.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cfg.compile:  # measured: 16% faster steps in a grid of 4 on 2 cores, after ~50 s of compiling
        net.outputs = torch.compile(net.outputs)
    opt = build_optimizer(cfg, net.trainable_parameters())
    if states[0] is not None:
        grouped.optimizer_state_from_members(opt, [s["opt"] for s in states], member_opts)
    for p in paths:
        write_json_atomic(p / "provenance.json", prov)

    train_x, train_y = data.train.x.to(device), data.train.y.to(device)
    augment = BatchAugment.for_config(cfg)
    n, bs = len(train_y), cfg.batch_size
    n_batches = batches_per_epoch(n, bs, cfg.bn_groups, 1)
    total = cfg.epochs * n_batches
    bar = tqdm(total=total, initial=step, desc=f"grid of {G}: {paths[0].name}", disable=not progress,
               unit="step", dynamic_ncols=True, mininterval=1.0)
    bf16 = use_bf16(cfg, device)
    net.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = learning_rate(cfg, epoch)
        set_learning_rate(opt, lr)
        randomness = {s: epoch_randomness(first_of_seed[s], n, epoch, device) for s in seeds}
        logs: list[dict[str, list]] = [{} for _ in range(G)]
        for b in range(n_batches):
            idx = {s: order[b * bs:(b + 1) * bs] for s, (order, _) in randomness.items()}
            views = {s: batch_views(data, augment, train_x[idx[s]], g_aug, net.n_views, channels_last)
                     for s, (_, g_aug) in randomness.items()}
            inputs = views[seeds[0]] if len(seeds) == 1 else \
                [torch.cat([views[c.seed][v] for c in cfgs], dim=1) for v in range(net.n_views)]
            step += 1
            batch_logs = grid_step(grouped, members, opt, inputs, [train_y[idx[c.seed]] for c in cfgs],
                                   [idx[c.seed] for c in cfgs], step / total, bf16)
            for g, lg in enumerate(batch_logs):
                for k, v in lg.items():
                    logs[g].setdefault(k, []).append(v)
            bar.update(1)
        share = (time.perf_counter() - t0) / G
        values = [{k: torch.stack(v).float().cpu().tolist() for k, v in lg.items()} for lg in logs]
        for c, p, v in zip(cfgs, paths, values):
            check_finite(v, c, p, epoch)
        grouped.to_members()
        for g, (m, c, p) in enumerate(zip(members, cfgs, paths)):
            record, walls[g] = write_epoch(p, c, m, grouped.optimizer_state_to_member(opt, g, member_opts[g]), data,
                                           device, epoch + 1, step, lr, values[g], share, walls[g],
                                           time.perf_counter() - share, grid_size=G)
            if progress:
                bar.write(f"{p.name} epoch {epoch + 1}/{cfg.epochs}: {epoch_summary(record)}")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    bar.close()
    for m, c, p, w in zip(members, cfgs, paths, walls):
        finish(m, data, c, device, p, w, dict(prov))


# ---------------------------------------------------------------------- command line
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sslnb.grid",
                                description="Train run directories (each holding its config.json) as one grid.")
    p.add_argument("run_dirs", nargs="+", help="run directories, each with a config.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--wait", action="store_true", help="wait for another process that holds a run (default: refuse)")
    args = p.parse_args(argv)
    try:
        cfgs = [read_config(Path(d) / "config.json") for d in args.run_dirs]
        train_grid(cfgs, args.run_dirs, progress=not args.quiet, wait=args.wait)
    except (ConfigError, DatasetUnavailable, FloatingPointError, RunDirError, FileNotFoundError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return getattr(e, "status", 2)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
