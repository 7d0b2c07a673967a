"""A grid of runs trained as one batched network: ``python -m sslnb.grid RUN_DIR [RUN_DIR ...]``.

The book's studies are grids of small runs (BatchNorm codes, seeds, temperatures, augmentations). Runs
whose configs differ only in :data:`GRID_FIELDS` train in one process as one network of G groups
(:class:`sslnb.grouped.GroupedNetwork`): each step runs every network call once, batched
(``Method.outputs``), then each run's own loss (``Method.objective``, with its own config: its
temperature, its memory bank), and one optimiser step whose every operation is elementwise, so each run
moves exactly as it would alone. The G runs stay independent: the loss is their sum, and no tensor
mixes two runs. Runs with the same seed and pipeline see the same batches (common random numbers: their
differences are not blurred by different data orders and augmentations); the others each see their own
(its *stream*: the batches and views it would see alone).

Each run directory is written exactly as :mod:`sslnb.train` writes it (same records, same checkpoint
format, each run resumable alone or in a grid). A run's ``epoch_s`` and ``wall_s`` are its share of the
grid's time (the grid's time / G, plus its own measurements); ``provenance.json`` names the grid and
each run's grid settings (so that the same command can start a run that was moved aside again).

"Run the same command again" holds after any stop: an epoch ends by writing every run's checkpoint
beside its old one, then renaming them into place (:func:`sslnb.rundir.settle_pending` finishes or undoes
an epoch stopped between those steps), and runs that are behind the others (one trained alone for a
while, or started again after it was moved aside) first catch up as a smaller grid.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import dist
from .augment import BatchAugment
from .config import Config, ConfigError, nearest, parse_value
from .data import DatasetUnavailable, batches_per_epoch, dataset_of, steps_per_epoch
from .evaluate import epoch_record
from .grouped import GroupedNetwork
from .methods import CLASSES, build_method
from .optim import build_optimizer, learning_rate, member_rates, set_learning_rate, step_with_rates
from .rundir import (PENDING, RunDirError, claim, commit_pending, config_difference, finished, lock, provenance,
                     read_config, run_name, settle_pending, verify_resume, write_json_atomic)
from .train import (batch_views, check_finite, epoch_randomness, epoch_summary, finish, make_run_dir, use_bf16,
                    use_channels_last, write_epoch, write_metrics)

# The settings that may differ between the runs of one grid: each is either data of the step (the seed
# picks the initial weights, the data order and the augmentations; the pipeline makes the views), part
# of the run's own objective (the temperature, SimCLR's loss) or a per-group switch of the batched
# network (each BatchNorm of the BN code present or not, its scale and shift learned or not, the ghost
# groups it splits the batch into), of its after-step update (BYOL's EMA rate and its schedule) or of its
# optimiser step (the learning rate and the predictor's multiplier: each run's block of every batched
# parameter moves at its own rate, optim.step_with_rates).
GRID_FIELDS = ("seed", "bn_code", "temperature", "augment", "simclr_loss", "bn_affine", "bn_groups", "ema",
               "ema_schedule", "lr", "pred_lr_mult")
# Settings a grid can hold but plan() keeps apart, because mixing them costs more than the grid saves
# (bench/RESULTS.md, "Packing the laptop book": one run of another ghost-group count made a grid of six
# about 55% slower per run-step, so that run cost more inside the grid than alone).
PACK_APART = ("bn_groups",)
# Settings each run of a grid keeps for itself without changing the step: how often it is measured, and
# the preset's name (a label).
PER_RUN_FIELDS = ("eval_every", "preset")
MAX_GRID = 8  # runs per grid by default (measured: bench/RESULTS.md, "Grids of runs")


def note(message: str) -> None:
    print(f"sslnb.grid: {message}", file=sys.stderr, flush=True)


def grid_key(cfg: Config) -> str | None:
    """Configs with equal keys can train as one grid; None for a config that trains alone (several
    processes, or a method's own refusal, ``Method.grid_refusal``: InsDis's NCE, whose negatives come from
    the global random stream)."""
    if cfg.world_size != 1 or CLASSES[cfg.method].grid_refusal(cfg):
        return None
    settings = {k: v for k, v in cfg.to_dict().items() if k not in GRID_FIELDS + PER_RUN_FIELDS}
    return json.dumps(settings, sort_keys=True, default=list)


def grid_refusal(cfgs: list[Config]) -> str | None:
    """Why ``cfgs`` cannot train as one grid (one line naming the setting), or None when they can."""
    for c in cfgs:
        if grid_key(c) is None:
            why = "several processes" if c.world_size != 1 else CLASSES[c.method].grid_refusal(c)
            return f"these runs cannot train as one grid: a {c.method} run with {why} trains alone"
    first = cfgs[0].to_dict()
    for c in cfgs[1:]:
        for k, v in c.to_dict().items():
            if k not in GRID_FIELDS + PER_RUN_FIELDS and v != first[k]:
                return (f"these runs cannot train as one grid: they differ in {k} ({first[k]!r} and {v!r}); a grid's "
                        f"runs may differ only in {', '.join(GRID_FIELDS)}")
        if (c.lr, c.pred_lr_mult) != (cfgs[0].lr, cfgs[0].pred_lr_mult) and (c.optimizer != "sgd" or c.momentum == 0):
            return ("these runs cannot train as one grid: runs of different learning rates share a grid only with "
                    f"SGD and momentum (these have optimizer {c.optimizer!r}, momentum {c.momentum})")
        if steps_per_epoch(c) != steps_per_epoch(cfgs[0]):  # bn_groups can drop a last, small batch
            return (f"these runs cannot train as one grid: with bn_groups {cfgs[0].bn_groups} and {c.bn_groups} their "
                    f"epochs have {steps_per_epoch(cfgs[0])} and {steps_per_epoch(c)} steps")
    return None


def plan(pairs, max_size: int = MAX_GRID, parts: int = 1):
    """Split ``(config, run_dir)`` pairs into grids (lists of 2 to ``max_size`` pairs that
    :func:`train_grid` can train together) and the pairs that train alone, keeping their order. The runs
    of one possible grid are split into at least ``parts`` grids of near-equal size where each keeps two
    runs (so that ``parts`` processes share the work). Runs that differ in :data:`PACK_APART` are kept
    apart. Runs at different epochs may share a grid (the ones behind catch up first), so an interrupted
    grid is planned as it was. Returns ``(grids, alone)``."""
    groups: dict[str, list] = {}
    alone = []
    pairs = [(cfg, Path(path)) for cfg, path in pairs]
    for cfg, path in pairs:
        key = grid_key(cfg)
        if key is None or max_size < 2:
            alone.append((cfg, path))
        else:
            groups.setdefault(key + repr([getattr(cfg, k) for k in PACK_APART]), []).append((cfg, path))
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


def train_grid(cfgs: list[Config], run_dirs, progress: bool = True, wait: bool = False, on_epoch_end=None) -> list[Path]:
    """Train the runs ``cfgs`` into ``run_dirs`` as one grid (see the module docstring), resuming each
    from its checkpoint. Finished runs are left as they are (also those another process finishes while
    this one waits for them). Every run directory is locked for the whole grid; ``on_epoch_end(epoch)``
    is called once all checkpoints of the epoch are on disk."""
    run_dirs = [Path(p) for p in run_dirs]
    if len(cfgs) != len(run_dirs):
        raise ConfigError(f"a grid needs one run directory per config ({len(cfgs)} configs, {len(run_dirs)} directories)")
    seen: dict[Path, Path] = {}
    for p in run_dirs:  # the same directory under two spellings (a/../a/s0, a symlink) is one run
        if p.resolve() in seen:
            raise ConfigError(f"{seen[p.resolve()]} and {p} are the same run directory; name each run of a grid once")
        seen[p.resolve()] = p
    refusal = grid_refusal(cfgs)
    if refusal:
        raise ConfigError(refusal)
    todo = _unfinished(cfgs, run_dirs)
    if not todo:
        return run_dirs
    device = dist.init(cfgs[0].device)
    if dist.world_size() != 1:
        raise ConfigError("a grid trains in one process; start it without torchrun")
    data = dataset_of(todo[0][0])  # before anything is written
    with contextlib.ExitStack() as held:
        for cfg, path in todo:
            make_run_dir(path)
            held.enter_context(lock(path, wait, say=note))
        todo = _unfinished(*zip(*todo))  # (another process may have finished some while this one waited)
        if not todo:
            return run_dirs
        for cfg, path in todo:
            claim(path, cfg)
        settle_pending([p for _, p in todo], say=note)
        states = [verify_resume(p, c, map_location=device, say=note) for c, p in todo]
        _catch_up([c for c, _ in todo], [p for _, p in todo], device, data, states, progress, on_epoch_end)
    return run_dirs


def _unfinished(cfgs, run_dirs) -> list[tuple[Config, Path]]:
    """The ``(config, run_dir)`` pairs whose run is not finished; a finished run of another config is refused."""
    todo = []
    for cfg, path in zip(cfgs, run_dirs):
        if not finished(path):
            todo.append((cfg, path))
        elif diff := config_difference(path, cfg):
            raise ConfigError(f"{path} holds a run with a different config ({diff}); choose another run directory")
    return todo


def _catch_up(cfgs, paths, device, data, states, progress: bool, on_epoch_end) -> None:
    """Train the grid to its end. Runs behind the others (one trained alone for a while, one started
    again after it was moved aside) first train as a smaller grid up to the next run's epoch, until all
    are at one epoch; from there they train as one grid, as if never apart."""
    epochs = [0 if s is None else s["epoch"] for s in states]
    while len(set(epochs)) > 1:
        low = min(epochs)
        target = min(e for e in epochs if e > low)
        behind = [i for i, e in enumerate(epochs) if e == low]
        note(f"{', '.join(paths[i].name for i in behind)} at epoch {low}: catching up to epoch {target} "
             f"before the grid trains together")
        _train_grid([cfgs[i] for i in behind], [paths[i] for i in behind], device, data, [states[i] for i in behind],
                    progress, on_epoch_end, until=target)
        for i in behind:
            states[i] = verify_resume(paths[i], cfgs[i], map_location=device, say=note)
            epochs[i] = target
    _train_grid(cfgs, paths, device, data, states, progress, on_epoch_end)


def grid_step(grouped: GroupedNetwork, members, opt, inputs, ys, idxs, progress: float, bf16: bool = False,
              rates: list[torch.Tensor] | None = None) -> list[dict]:
    """One optimiser step of every run of a grid: the batched network's ``outputs`` once on ``inputs``
    (views (B, 3, H, W), or (B, G*3, H, W) with each run's images side by side), each run's ``objective``
    on its part with its labels ``ys[g]`` and indices ``idxs[g]``, the optimiser step on the summed
    loss (each run at its own learning rate where ``rates``, :func:`~sslnb.optim.member_rates`, says
    they differ), then ``after_step``. Returns each run's logs."""
    net, groups = grouped.network, grouped.groups
    with torch.autocast(inputs[0].device.type, dtype=torch.bfloat16, enabled=bf16):
        out = net.outputs(inputs)
        results = [m.objective(split_outputs(out, groups, g), y, idx)
                   for g, (m, y, idx) in enumerate(zip(members, ys, idxs))]
    opt.zero_grad(set_to_none=True)
    torch.stack([loss for loss, _ in results]).sum().backward()
    step_with_rates(opt, rates)
    grouped.pin()
    if net.after_step_on == "network":
        net.after_step(progress, members)
    else:
        for m in members:
            m.after_step(progress)
    return [logs for _, logs in results]


def stream_of(cfg: Config) -> tuple:
    """What makes a run's batches and views: its seed (data order, augmentation draws) and its pipeline."""
    return cfg.seed, cfg.augment


def grid_batches(cfgs, data, train_x, train_y, epoch: int, n_batches: int, n_views: int, channels_last: bool, device):
    """The steps of one epoch of a grid: ``(inputs, ys, idxs)`` per step, where each run gets exactly the
    images (``idxs[g]``), labels (``ys[g]``) and views it would get alone, drawn once per stream."""
    streams = {stream_of(c): c for c in reversed(cfgs)}  # each stream drawn by its first run's config
    randomness = {k: epoch_randomness(c, len(train_y), epoch, device) for k, c in streams.items()}
    augments = {k: BatchAugment.for_config(c) for k, c in streams.items()}
    keys, bs = [stream_of(c) for c in cfgs], cfgs[0].batch_size
    for b in range(n_batches):
        idx = {k: order[b * bs:(b + 1) * bs] for k, (order, _) in randomness.items()}
        views = {k: batch_views(data, augments[k], train_x[idx[k]], g_aug, n_views, channels_last)
                 for k, (_, g_aug) in randomness.items()}
        yield grid_inputs(views, keys), [train_y[idx[k]] for k in keys], [idx[k] for k in keys]


def grid_inputs(views: dict, members: list) -> list[torch.Tensor]:
    """The batched network's input from each stream's views (``views[stream]``: n_views tensors
    (B, 3, H, W)) for runs whose streams are ``members``: one stream's views as they are, or each run's
    views side by side on the channel axis, (B, G*3, H, W)."""
    if len(views) == 1:
        return next(iter(views.values()))
    return [torch.cat([views[k][v] for k in members], dim=1) for v in range(len(views[members[0]]))]


def split_outputs(out, groups: int, g: int):
    """Run g's part of a batched output: (B, G*f) tensors -> (B, f), in nested lists and dicts."""
    if torch.is_tensor(out):
        return out.reshape(out.shape[0], groups, -1)[:, g]
    if isinstance(out, dict):
        return {k: split_outputs(v, groups, g) for k, v in out.items()}
    return [split_outputs(v, groups, g) for v in out]


def _train_grid(cfgs, paths, device, data, states, progress: bool, on_epoch_end, until: int | None = None) -> None:
    """Train runs that are all at one epoch (``states``: their checkpoints, or None) as one grid, to epoch
    ``until`` (default: the end, then measure and finish each run)."""
    G, cfg = len(cfgs), cfgs[0]
    until = cfg.epochs if until is None else until
    members, member_opts = [], []
    for c in cfgs:
        torch.manual_seed(c.seed)  # each run's initial weights, exactly as alone
        m = build_method(c, data.num_classes, len(data.train))
        members.append(dist.configure_batchnorm(m, c.dist_bn, c.bn_groups).to(device))
        member_opts.append(build_optimizer(c, members[-1].trainable_parameters()))
    prov = {**provenance(device), "world_size": 1, "dist_bn": cfg.dist_bn,
            "grid": {"size": G, "runs": [p.name for p in paths],
                     "settings": {p.name: {k: getattr(c, k) for k in GRID_FIELDS} for c, p in zip(cfgs, paths)}}}
    start_epoch, step, walls = 0, 0, [0.0] * G
    if states[0] is not None:
        for m, s in zip(members, states):
            m.load_state_dict(s["model"])
        start_epoch, step, walls = states[0]["epoch"], states[0]["step"], [s["wall_s"] for s in states]
        prov["resumed_at_epoch"] = start_epoch
    else:
        for m, c, p in zip(members, cfgs, paths):
            write_metrics(p / "metrics.jsonl", "w", [{"kind": "epoch", "epoch": 0, **epoch_record(m, data, c, device)}])
    grouped = GroupedNetwork(members, shared_input=len({stream_of(c) for c in cfgs}) == 1)
    channels_last = use_channels_last(cfg, device, groups=G)
    net = grouped.network.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cfg.compile:  # measured: 16% faster steps in a grid of 4 on 2 cores, after ~50 s of compiling
        net.outputs = torch.compile(net.outputs)
    opt = build_optimizer(cfg, net.trainable_parameters())
    if states[0] is not None:
        grouped.optimizer_state_from_members(opt, [s["opt"] for s in states], member_opts)
    provs = [{**prov, "bn_batch": dist.bn_batch(c.batch_size, c.bn_groups, c.dist_bn, 1)} for c in cfgs]
    for p, own in zip(paths, provs):
        write_json_atomic(p / "provenance.json", own)

    train_x, train_y = data.train.x.to(device), data.train.y.to(device)
    n_batches = batches_per_epoch(len(train_y), cfg.batch_size, cfg.bn_groups, 1)
    total = cfg.epochs * n_batches
    bar = tqdm(total=total, initial=step, desc=f"grid of {G}: {paths[0].name}", disable=not progress,
               unit="step", dynamic_ncols=True, mininterval=1.0)
    bf16 = use_bf16(cfg, device)
    try:  # the bar ends its line before an error is printed
        net.train()
        for epoch in range(start_epoch, until):
            t0 = time.perf_counter()
            lrs = [learning_rate(c, epoch) for c in cfgs]  # each run's own schedule
            for mo, lr in zip(member_opts, lrs):
                set_learning_rate(mo, lr)
            set_learning_rate(opt, lrs[0])
            rates = member_rates(opt, member_opts)
            logs: list[dict[str, list]] = [{} for _ in range(G)]
            for inputs, ys, idxs in grid_batches(cfgs, data, train_x, train_y, epoch, n_batches, net.n_views,
                                                 channels_last, device):
                step += 1
                batch_logs = grid_step(grouped, members, opt, inputs, ys, idxs, step / total, bf16, rates)
                for g, lg in enumerate(batch_logs):
                    for k, v in lg.items():
                        logs[g].setdefault(k, []).append(v)
                bar.update(1)
            share = (time.perf_counter() - t0) / G
            values = [{k: torch.stack(v).float().cpu().tolist() for k, v in lg.items()} for lg in logs]
            for c, p, v in zip(cfgs, paths, values):
                check_finite(v, c, p, epoch)
            grouped.to_members()
            for g, (m, c, p) in enumerate(zip(members, cfgs, paths)):  # every run's checkpoint written, then
                record, walls[g] = write_epoch(p, c, m, grouped.optimizer_state_to_member(opt, g, member_opts[g]), data,
                                               device, epoch + 1, step, lrs[g], values[g], share, walls[g],
                                               time.perf_counter() - share, checkpoint=PENDING, grid_size=G)
                if progress:
                    bar.write(f"{p.name} epoch {epoch + 1}/{cfg.epochs}: {epoch_summary(record)}")
            for p in paths:  # ... committed (see rundir.settle_pending for a stop in between)
                commit_pending(p)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    finally:
        bar.close()
    if until < cfg.epochs:
        return
    for m, c, p, w, own in zip(members, cfgs, paths, walls, provs):
        finish(m, data, c, device, p, w, own)


# ---------------------------------------------------------------------- command line
def read_grid_configs(run_dirs: list[Path]) -> list[Config]:
    """Each run directory's config. A directory without one (a run moved aside, to be trained again) takes
    the config of a run that trained in a grid with it, with its own grid settings from that run's
    ``provenance.json``; a file in the way, or a run no other run knows, is one line."""
    known = {}
    for d in run_dirs:
        if d.exists() and not d.is_dir():
            raise RunDirError(f"cannot use {d} as a run directory: a file is in the way; name a directory")
        if (d / "config.json").exists():
            known[d] = read_config(d / "config.json")
    return [known[d] if d in known else _config_from_grid(d, known) for d in run_dirs]


def _config_from_grid(run_dir: Path, known: dict[Path, Config]) -> Config:
    for d, cfg in known.items():
        try:
            grid = json.loads((d / "provenance.json").read_text()).get("grid", {})
        except (OSError, ValueError, AttributeError):
            continue
        settings = grid.get("settings", {}) if isinstance(grid, dict) else {}
        if isinstance(settings.get(run_dir.name), dict):
            return cfg.replace(**{k: v for k, v in settings[run_dir.name].items() if k in GRID_FIELDS})
    raise RunDirError(f"{run_dir} holds no config.json, and no other run of this grid records it; train it with "
                      f"python -m sslnb.train --run-dir {run_dir} and its settings, or give it a config.json")


def configs_from_options(method: str, preset: str, seeds: str, vary: list[str], settings: list[str]) -> list[Config]:
    """The grid ``--method M --preset P --seeds 0,1 --vary bn_code=111,000 --set epochs=10`` describes: the
    preset's config of the method with the ``--set`` settings, one run for every combination of the seeds
    and the ``--vary`` values (each a field of :data:`GRID_FIELDS`)."""
    def pair(text: str, flag: str) -> tuple[str, str]:
        if "=" not in text:
            raise ConfigError(f"{flag} {text!r}: expected FIELD=VALUE")
        name, value = text.split("=", 1)
        return name.strip().replace("-", "_"), value

    common = {}
    for text in settings:
        name, value = pair(text, "--set")
        common[name] = parse_value(name, value)
    axes = [("seed", [parse_value("seed", s) for s in seeds.split(",") if s.strip()])]
    for text in vary:
        name, values = pair(text, "--vary")
        if name not in GRID_FIELDS:
            raise ConfigError(f"--vary {name}: a grid's runs may differ only in {', '.join(GRID_FIELDS)}"
                              f"{nearest(name, GRID_FIELDS)}")
        axes.append((name, [parse_value(name, v) for v in values.split(",")]))
    base = Config.from_preset(preset, method, **common)
    return [base.replace(**dict(zip([n for n, _ in axes], combo)))
            for combo in itertools.product(*[values for _, values in axes])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sslnb.grid",
                                description="Train run directories as one grid: directories that hold their "
                                            "config.json, or the runs --method/--preset/--seeds/--vary describe.")
    p.add_argument("run_dirs", nargs="*", help="run directories, each with a config.json (a run moved aside "
                                                "is started again from the grid's record in the others)")
    p.add_argument("--method", help="create the runs of this method instead (under --run-root, named by "
                                    "their configs)")
    p.add_argument("--preset", default="cpu", help="with --method: the preset (default: cpu)")
    p.add_argument("--seeds", default="0", help="with --method: comma-separated seeds (default: 0)")
    p.add_argument("--vary", action="append", default=[], metavar="FIELD=V1,V2",
                   help=f"with --method: one run per value (fields: {', '.join(GRID_FIELDS)})")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="with --method: a setting of every run (any field of sslnb.config.Config)")
    p.add_argument("--run-root", default="runs", help="with --method: where the run directories go (default: runs)")
    p.add_argument("--dry-run", action="store_true", help="print the run directories, train nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--wait", action="store_true", help="wait for another process that holds a run (default: refuse)")
    args = p.parse_args(argv)
    if bool(args.method) == bool(args.run_dirs):
        p.error("give run directories, or --method (with --preset, --seeds, --vary, --set), not both")
    try:
        if args.method:
            cfgs = configs_from_options(args.method, args.preset, args.seeds, args.vary, args.set)
            run_dirs = [Path(args.run_root) / run_name(c) for c in cfgs]
        else:
            run_dirs = [Path(d) for d in args.run_dirs]
            cfgs = read_grid_configs(run_dirs)
        if args.dry_run:
            print("\n".join(map(str, run_dirs)))
            return 0
        train_grid(cfgs, run_dirs, progress=not args.quiet, wait=args.wait)
    except (ConfigError, DatasetUnavailable, FloatingPointError, RunDirError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return getattr(e, "status", 2)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
