"""The one training entry point: ``python -m sslnb.train --method byol --preset cpu --run-dir runs/NAME``.

It trains on the CPU, one GPU, or N processes under ``torchrun --nproc_per_node=N -m sslnb.train ...``
(``sslnb.dist``: each process takes an equal share of every global batch; rank 0 writes the run
directory), writes the run directory described in ``sslnb.rundir`` and resumes an interrupted run from
it. The loop is the seed's: SGD with the learning rate set at the start of every epoch, one optimiser
step per batch, the method's ``after_step`` (EMA, memory bank) after it, then the epoch's measurements
(``sslnb.evaluate.epoch_record``) and an atomic checkpoint at the end of every epoch. Nothing here is
specific to a method or measures anything itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import dist
from .augment import BatchAugment, seeded_generator
from .config import PRESETS, Config, ConfigError, field_docs, field_help, field_names, parse_value
from .data import DatasetUnavailable, batches_per_epoch, dataset_of
from .evaluate import epoch_record, final_result
from .methods import build_method
from .optim import build_optimizer, learning_rate, set_learning_rate
from .rundir import (CHECKPOINT, RunDirError, claim, config_difference, finished, lock, provenance, read_records,
                     run_name, save_atomic, savez_atomic, verify_resume, write_error, write_json_atomic)


def use_channels_last(cfg: Config, device: torch.device, groups: int = 1) -> bool:
    """``channels_last`` resolved for ``device`` (``groups``: runs batched by :mod:`sslnb.grid`). Measured on
    this project's 2-core CPU (CIFAR ResNet-18, one training step): NCHW is 2.6-4.7x faster at widths
    16-32 and channels_last ~10% faster at 64; for grouped convolutions (grids) channels_last is faster."""
    if cfg.channels_last == "auto":
        return device.type == "cuda" or cfg.width >= 64 or groups > 1
    return cfg.channels_last == "on"


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """bf16 autocast: on CUDA by default (tensor cores); off on a CPU, where it is slower."""
    return cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def apply_performance_options(method, cfg: Config, device: torch.device):
    """Apply ``channels_last`` to the method's weights and ``compile``; returns ``(method, forward)``,
    where ``forward`` is what a step calls (the compiled module, or the method itself). The method is
    what is saved and evaluated, so checkpoints do not depend on the options."""
    if use_channels_last(cfg, device):
        method = method.to(memory_format=torch.channels_last)
    method.bf16 = use_bf16(cfg, device)
    forward = dist.wrap(method)  # DistributedDataParallel under several processes
    if cfg.compile:
        forward = torch.compile(forward)
    return method, forward


def train_step(method, forward, opt, views, y, idx, progress: float):
    """One optimiser step: the method's forward (under bf16 autocast if enabled), backward, the
    optimiser step, then ``after_step`` (EMA, memory bank). Returns ``(loss, logs)``, still on the device:
    nothing here waits for the device."""
    device_type = views[0].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=getattr(method, "bf16", False)):
        loss, logs = forward(views, y, idx)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    method.after_step(progress)
    return loss, logs


def train(cfg: Config, run_dir: str | Path, progress: bool = True, on_epoch_end=None, wait: bool = False) -> Path:
    """Train ``cfg`` into ``run_dir`` (resuming if it holds a checkpoint) and evaluate the result.

    A finished run is left as it is. Nothing is written before the device and the dataset are known to
    be there; then the run directory is locked for this process (``wait``: wait for another process
    that holds it, instead of refusing) and what it holds is checked (:func:`sslnb.rundir.verify_resume`).
    ``on_epoch_end(epoch)`` is called after each epoch's checkpoint is safely on disk (tests use it to
    simulate an interruption).
    """
    run_dir = Path(run_dir)
    device = dist.init(cfg.device)
    world, main = dist.world_size(), dist.is_main()
    if world != cfg.world_size:
        raise ConfigError(f"world_size={cfg.world_size} but {world} processes were started; "
                          f"use torchrun --nproc_per_node={cfg.world_size} (or --world-size {world})")
    if finished(run_dir) and _is_finished_run(run_dir, cfg, main):
        return run_dir
    data = dataset_of(cfg)  # before anything is written: a missing dataset leaves no trace
    with contextlib.ExitStack() as held:
        state = None
        if main:
            make_run_dir(run_dir)
            held.enter_context(lock(run_dir, wait, say=note))
            if not finished(run_dir):  # (another process may have finished it while this one waited)
                claim(run_dir, cfg)
                state = verify_resume(run_dir, cfg, map_location=device, say=note)
        dist.barrier()
        if finished(run_dir) and _is_finished_run(run_dir, cfg, main):
            return run_dir
        if not main and (run_dir / "checkpoint.pt").exists():  # verified by rank 0
            state = torch.load(run_dir / "checkpoint.pt", map_location=device, weights_only=True)
        _train(cfg, run_dir, device, data, state, progress and main, on_epoch_end)
    return run_dir


def _is_finished_run(run_dir: Path, cfg: Config, main: bool) -> bool:
    """A finished run asked for again: refuse another config, else say where its result is."""
    diff = config_difference(run_dir, cfg)
    if diff:
        raise ConfigError(f"{run_dir} holds a run with a different config ({diff}); choose another --run-dir")
    if main:
        print(f"{run_dir} is finished: its result is in {run_dir / 'result.json'}", flush=True)
    return True


def note(message: str) -> None:
    print(f"sslnb.train: {message}", file=sys.stderr, flush=True)


def make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunDirError(f"cannot use {run_dir} as a run directory: a file is in the way; choose another "
                          f"run directory") from None
    except OSError as e:
        raise RunDirError(f"cannot create the run directory {run_dir}: {e.strerror}; choose a writable "
                          f"run directory", status=1) from None
    if not os.access(run_dir, os.W_OK):
        raise RunDirError(f"cannot write into the run directory {run_dir}: permission denied; choose a "
                          f"writable run directory", status=1)


def _train(cfg: Config, run_dir: Path, device, data, state: dict | None, progress: bool, on_epoch_end) -> None:
    """The loop: build the method, start (recording the untrained network as epoch 0) or resume from
    ``state``, train the remaining epochs with a checkpoint after each, then measure the result."""
    world, rank, main = dist.world_size(), dist.rank(), dist.is_main()
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, data.num_classes, len(data.train))
    method = dist.configure_batchnorm(method, cfg.dist_bn, cfg.bn_groups).to(device)
    opt = build_optimizer(cfg, method.trainable_parameters())
    metrics_path = run_dir / "metrics.jsonl"
    prov = {**provenance(device), "world_size": world, "dist_bn": cfg.dist_bn,
            "bn_batch": dist.bn_batch(cfg.batch_size, cfg.bn_groups, cfg.dist_bn, world)}
    start_epoch, step, wall = 0, 0, 0.0
    if state is not None:
        method.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_epoch, step, wall = state["epoch"], state["step"], state["wall_s"]
        prov["resumed_at_epoch"] = start_epoch
    elif main:  # epoch 0: the randomly initialised network
        write_metrics(metrics_path, "w", [{"kind": "epoch", "epoch": 0, **epoch_record(method, data, cfg, device)}])
    dist.broadcast_state(method)  # identical start on every process, whatever their RNGs did
    method, forward = apply_performance_options(method, cfg, device)
    channels_last = use_channels_last(cfg, device)
    if main:
        write_json_atomic(run_dir / "provenance.json", prov)

    train_x, train_y = data.train.x.to(device), data.train.y.to(device)
    augment = BatchAugment.for_config(cfg)
    n, bs = len(train_y), cfg.batch_size
    n_batches = batches_per_epoch(n, bs, cfg.bn_groups, world)
    total = cfg.epochs * n_batches
    bar = tqdm(total=total, initial=step, desc=run_dir.name, disable=not progress, unit="step",
               dynamic_ncols=True, mininterval=1.0)
    try:  # the bar ends its line before an error is printed
        method.train()
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            lr = learning_rate(cfg, epoch)
            set_learning_rate(opt, lr)
            order, g_aug = epoch_randomness(cfg, n, epoch, device)
            logs: dict[str, list] = {}
            for b in range(n_batches):
                idx = order[b * bs:(b + 1) * bs].chunk(world)[rank]  # this process's share, in rank order
                views = batch_views(data, augment, train_x[idx], g_aug, method.n_views, channels_last)
                step += 1
                loss, batch_logs = train_step(method, forward, opt, views, train_y[idx], idx, step / total)
                for k, v in batch_logs.items():  # kept as tensors: no host synchronisation per step
                    logs.setdefault(k, []).append(v)
                bar.update(1)
                if b % 20 == 0 and progress:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}",
                                    img_s=f"{(b + 1) * bs / (time.perf_counter() - t0):.0f}")
            epoch_time = time.perf_counter() - t0
            values = {k: dist.mean(torch.stack(v).float()).cpu().tolist() for k, v in logs.items()}
            check_finite(values, cfg, run_dir, epoch)
            if not main:  # rank 0 evaluates and writes; the others wait for it
                dist.barrier()
                continue
            record, wall = write_epoch(run_dir, cfg, method, opt.state_dict(), data, device, epoch + 1, step, lr,
                                       values, epoch_time, wall, t0)
            if progress:
                bar.write(f"epoch {epoch + 1}/{cfg.epochs}: {epoch_summary(record)}")
            dist.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
    finally:
        bar.close()
    if main:
        finish(method, data, cfg, device, run_dir, wall, prov)


def epoch_summary(record: dict) -> str:
    """One epoch record as the progress line shows it: the loss, and the measurements when it has them."""
    if "z_std" not in record:
        return f"loss {record['loss']:.4f}"
    knn = f", kNN {record['knn']:.1f}%" if "knn" in record else ""  # a folder without classes has none
    return (f"loss {record['loss']:.4f}{knn}, z_std {record['z_std']:.3f} "
            f"(1/sqrt(d) = {record['z_std_ref']:.3f})")


def epoch_randomness(cfg: Config, n: int, epoch: int, device) -> tuple[torch.Tensor, torch.Generator]:
    """The epoch's image order (n,) and augmentation generator, from the run's seed alone (so that a
    resumed run, and a run inside a grid, sees exactly the batches of an uninterrupted one)."""
    world, rank = dist.world_size(), dist.rank()
    order = torch.randperm(n, generator=seeded_generator(torch.device("cpu"), cfg.seed, epoch, 0)).to(device)
    return order, seeded_generator(device, cfg.seed, epoch, 1, *([rank] if world > 1 else []))


def batch_views(data, augment, x_uint8: torch.Tensor, g_aug, n_views: int, channels_last: bool) -> list[torch.Tensor]:
    """``n_views`` augmented, normalised views (B, 3, H, W) of a batch of stored images (B, 3, h, w) uint8."""
    x = x_uint8.float().div_(255)
    return [to_memory_format(data.normalize(augment(x, g_aug)), channels_last) for _ in range(n_views)]


def check_finite(values: dict[str, list], cfg: Config, run_dir: Path, epoch: int) -> None:
    """Stop (one line, nothing of this epoch written) when the epoch's losses are not finite."""
    if not all(math.isfinite(v) for v in values["loss"]):
        raise FloatingPointError(f"{run_dir.name}: the loss became non-finite in epoch {epoch + 1}; "
                                 f"lower --lr (now {cfg.lr}); the run resumes from epoch {epoch}")


def write_epoch(run_dir: Path, cfg: Config, method, opt_state: dict, data, device, epoch: int, step: int,
                lr: float, values: dict[str, list], epoch_s: float, wall: float, started: float,
                checkpoint: str = CHECKPOINT, **extra) -> tuple[dict, float]:
    """After epoch ``epoch`` (1-based): measure it, append its step and epoch records to ``metrics.jsonl``,
    then write the checkpoint atomically (into ``checkpoint``: a grid writes its runs' pending ones).
    ``values``: the epoch's per-step logs by name; ``wall``: the run's seconds before this epoch, which
    started at ``time.perf_counter()`` = ``started``; ``extra``: more fields of the epoch record. Returns
    the epoch record and the run's seconds so far."""
    n_batches = len(values["loss"])
    record = {"kind": "epoch", "epoch": epoch, "lr": lr, "epoch_s": epoch_s,
              "img_per_s": n_batches * cfg.batch_size / epoch_s, **extra,
              **{k if k == "loss" else f"train_{k}": float(np.mean(v)) for k, v in values.items()}}
    if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
        t_eval = time.perf_counter()
        record.update(epoch_record(method, data, cfg, device))
        record["eval_s"] = time.perf_counter() - t_eval
    metrics_path = run_dir / "metrics.jsonl"
    first = step - n_batches + 1
    write_metrics(metrics_path, "a", [{"kind": "step", "epoch": epoch, "step": first + i, "lr": lr, "loss": v}
                                      for i, v in enumerate(values["loss"])] + [record])
    wall += time.perf_counter() - started
    save_atomic(run_dir / checkpoint, {"config": cfg.to_dict(), "epoch": epoch, "step": step, "wall_s": wall,
                                            "model": method.state_dict(), "opt": opt_state,
                                            "metrics_bytes": metrics_path.stat().st_size})
    return record, wall


def write_metrics(path: Path, mode: str, records: list[dict]) -> None:
    """Records into ``metrics.jsonl`` (``mode`` "w" for a new run, "a" after an epoch), one JSON line each.
    A failed write is one line; what was written before the last checkpoint stays valid."""
    try:
        with open(path, mode) as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
    except OSError as e:
        raise write_error(path, e) from None


def finish(method, data, cfg: Config, device, run_dir: Path, wall: float, prov: dict) -> dict:
    """Measure the trained run (:func:`sslnb.evaluate.final_result`) and write its features for t-SNE,
    its provenance and, last, ``result.json``."""
    t0 = time.perf_counter()
    epochs = [r for r in read_records(run_dir) if r["kind"] == "epoch"]
    result, features = final_result(method, data, cfg, device, epochs)
    result["final_s"] = time.perf_counter() - t0  # the final measurements' share of wall_s (the probe, features)
    savez_atomic(run_dir / "features.npz", features)
    result["wall_s"] = wall + time.perf_counter() - t0
    prov["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    prov["wall_s"] = result["wall_s"]
    write_json_atomic(run_dir / "provenance.json", prov)
    write_json_atomic(run_dir / "result.json", result)
    return result


# ---------------------------------------------------------------------- command line
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit status 2, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sslnb.train", allow_abbrev=False,
                description="Train one run into a run directory. Every setting below is a field of "
                            "sslnb.config.Config; the defaults shown are the dataclass's (the seed's BYOL "
                            "command), --preset changes some of them, and each flag overrides one.")
    p.add_argument("--preset", default="cpu", help=f"{' | '.join(PRESETS)} (default: cpu)")
    p.add_argument("--run-dir", help="the run directory (default: RUN_ROOT/<name from the config>)")
    p.add_argument("--run-root", default="runs", help="where runs live when --run-dir is not given")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--wait", action="store_true",
                   help="if another process is training the same run directory, wait for it (default: refuse)")
    p.add_argument("--config", help="a config.json to train exactly (flags given as well override it)")
    for title, docs in field_docs():  # every Config field, documented from the dataclass
        group = p.add_argument_group(f"settings: {title}" if title else "settings")
        for doc in docs:
            if doc["name"] != "preset":
                group.add_argument(f"--{doc['name'].replace('_', '-')}", dest=doc["name"], metavar="VALUE",
                                   help=field_help(doc))
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {k: parse_value(k, v) for k, v in vars(args).items()
                 if k in field_names() and k != "preset" and v is not None}
    if args.config:
        try:
            base = Config.from_dict(json.loads(Path(args.config).read_text()))
        except OSError as e:
            raise ConfigError(f"--config {args.config} cannot be read: {e.strerror}") from None
        except (ValueError, ConfigError) as e:  # bad JSON, a list, an unknown key, a bad value
            raise ConfigError(f"--config {args.config}: {e}") from None
        return base.replace(**overrides)
    method = overrides.pop("method", "byol")
    return Config.from_preset(args.preset, method, **overrides)


@dist.record
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run_dir = args.run_dir
    first = os.environ.get("RANK", "0") == "0"  # under torchrun, only the first process prints
    try:
        cfg = config_from_args(args)
        if dist.launched() and args.world_size is None and not args.config:
            cfg = cfg.replace(world_size=int(os.environ["WORLD_SIZE"]))
        run_dir = Path(args.run_dir) if args.run_dir else Path(args.run_root) / run_name(cfg)
        train(cfg, run_dir, progress=not args.quiet, wait=args.wait)
    except (ConfigError, DatasetUnavailable, FloatingPointError, RunDirError) as e:
        if first:
            print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return getattr(e, "status", 2)
    except KeyboardInterrupt:
        if first:
            print(f"\ninterrupted: run the same command again to resume from {run_dir}", file=sys.stderr)
        return 130
    finally:
        dist.close()
    if first:
        print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
