"""The one training entry point: ``python -m sslnb.train --method byol --preset cpu --run-dir runs/NAME``.

It trains on the CPU, one GPU, or N processes under ``torchrun --nproc_per_node=N -m sslnb.train ...``
(``sslnb.dist``: each process takes an equal share of every global batch; rank 0 writes the run
directory), writes the run directory described in ``sslnb.runs`` and resumes an interrupted run from it. The loop is the seed's: SGD with the learning rate set at the start of every
epoch, one optimiser step per batch, the method's ``after_step`` (EMA, memory bank) after it, then a
kNN evaluation and an atomic checkpoint at the end of every epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import dist
from .augment import BatchAugment
from .config import Config, ConfigError, field_names, parse_value
from .data import DatasetUnavailable, ImageData, load_dataset
from .evaluate import alignment, collapse_stats, extract, knn_accuracy, linear_probe, uniformity
from .methods import build_method
from .optim import build_optimizer, learning_rate, set_learning_rate
from .runs import _NOT_IDENTITY, provenance, run_name, save_atomic, write_json_atomic


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is not allowed here: no CUDA device is visible; use cpu or auto")
    return torch.device(name)


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """``channels_last`` resolved for ``device``. Measured on this project's 2-core CPU (CIFAR ResNet-18,
    one training step): NCHW is 2.6-4.7x faster at widths 16-32 and channels_last ~10% faster at 64."""
    if cfg.channels_last == "auto":
        return device.type == "cuda" or cfg.width >= 64
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


def batches_per_epoch(n: int, cfg: Config) -> int:
    """The seed kept the last, smaller batch (drop_last=False); we drop it only if BN cannot use it,
    or if several processes would have to split it unevenly."""
    if cfg.world_size > 1:
        return n // cfg.batch_size
    return n // cfg.batch_size + (n % cfg.batch_size >= 2 * cfg.bn_groups)


def steps_per_epoch(cfg: Config) -> int:
    """Optimiser steps per epoch, without loading the data (for progress bars)."""
    from .data import TRAIN_SIZES

    n = TRAIN_SIZES[cfg.dataset]
    return batches_per_epoch(min(n, cfg.train_size) if cfg.train_size else n, cfg)


def _generator(device: torch.device, *seeds: int) -> torch.Generator:
    g = torch.Generator(device=device)
    value = 0
    for s in seeds:
        value = (value * 1_000_003 + s) % (2**62)
    g.manual_seed(value)
    return g


@torch.no_grad()
def _augmented_pair(method, data: ImageData, cfg: Config, device, n: int = 500):
    """Projections z of two augmented views of the first ``n`` test images (fixed randomness), eval mode."""
    augment = BatchAugment(cfg.augment, cfg.image_size)
    g = _generator(device, cfg.seed, 7)
    x = data.test.x[:n].to(device).float().div_(255)
    return [torch.cat([method.embed(data.normalize(augment(chunk, g)))[1].float().cpu()
                       for chunk in x.split(500)]) for _ in range(2)]


def evaluate_epoch(method, data: ImageData, cfg: Config, device) -> dict:
    """kNN accuracy of the last-conv feature h (and of the projection z) and collapse diagnostics:
    per-dimension std and effective rank of z, and Wang & Isola's alignment (two augmented views of
    500 test images) and uniformity (test images)."""
    was_training = method.training
    method.eval()
    train_h, train_z = extract(method.embed, data.train, data, cfg.image_size, device)
    test_h, test_z = extract(method.embed, data.test, data, cfg.image_size, device)
    z1, z2 = _augmented_pair(method, data, cfg, device)
    method.train(was_training)
    knn = lambda a, b: knn_accuracy(a, data.train.y, b, data.test.y, data.num_classes, cfg.knn_k, cfg.knn_t)  # noqa: E731
    record = {"knn": knn(train_h, test_h), "knn_z": knn(train_z, test_z), **collapse_stats(test_z),
              "alignment": alignment(z1, z2), "uniformity": uniformity(test_z)}
    if hasattr(method, "bank"):  # InsDis: the seed's monitor, test features against the memory bank
        record["knn_bank"] = knn(method.bank.vectors.float().cpu(), test_z)
    return record


def _check_same_config(run_dir: Path, cfg: Config) -> None:
    path = run_dir / "config.json"
    if not path.exists():
        write_json_atomic(path, cfg.to_dict())
        return
    old = Config.from_dict(json.loads(path.read_text()))
    diff = [k for k in field_names() if k not in _NOT_IDENTITY and getattr(old, k) != getattr(cfg, k)]
    if diff:
        raise ConfigError(f"{run_dir} holds a run with a different config ({diff[0]}={getattr(old, diff[0])!r}, "
                          f"asked {getattr(cfg, diff[0])!r}); choose another --run-dir")


def train(cfg: Config, run_dir: str | Path, progress: bool = True, on_epoch_end=None) -> Path:
    """Train ``cfg`` into ``run_dir`` (resuming if it holds a checkpoint) and evaluate the result.

    ``on_epoch_end(epoch)`` is called after each epoch's checkpoint is safely on disk (tests use it to
    simulate an interruption).
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    device = dist.init(cfg.device)
    world, rank, main = dist.world_size(), dist.rank(), dist.is_main()
    if world != cfg.world_size:
        raise ConfigError(f"world_size={cfg.world_size} but {world} processes were started; "
                          f"use torchrun --nproc_per_node={cfg.world_size} (or --world-size {world})")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_same_config(run_dir, cfg)
    dist.barrier()
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, cfg.train_size)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, data.num_classes, len(data.train))
    method = dist.configure_batchnorm(method, cfg.dist_bn, cfg.bn_groups).to(device)
    opt = build_optimizer(cfg, method.trainable_parameters())
    metrics_path, ckpt_path = run_dir / "metrics.jsonl", run_dir / "checkpoint.pt"
    prov = {**provenance(device), "world_size": world, "dist_bn": cfg.dist_bn,
            "bn_batch": dist.bn_batch(cfg.batch_size, cfg.bn_groups, cfg.dist_bn, world)}
    start_epoch, step, wall = 0, 0, 0.0
    if ckpt_path.exists():  # every process reads rank 0's checkpoint
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        method.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_epoch, step, wall = state["epoch"], state["step"], state["wall_s"]
        if main:
            with open(metrics_path, "r+") as f:  # drop records written after the checkpoint
                f.truncate(state["metrics_bytes"])
        prov["resumed_at_epoch"] = start_epoch
    elif main:
        with open(metrics_path, "w") as f:  # epoch 0: the randomly initialised network
            f.write(json.dumps({"kind": "epoch", "epoch": 0, **evaluate_epoch(method, data, cfg, device)}) + "\n")
    dist.broadcast_state(method)  # identical start on every process, whatever their RNGs did
    method, forward = apply_performance_options(method, cfg, device)
    channels_last = use_channels_last(cfg, device)
    if main:
        write_json_atomic(run_dir / "provenance.json", prov)

    train_x, train_y = data.train.x.to(device), data.train.y.to(device)
    augment = BatchAugment(cfg.augment, cfg.image_size)
    n, bs = len(train_y), cfg.batch_size
    n_batches = batches_per_epoch(n, cfg)
    total = cfg.epochs * n_batches
    progress = progress and main
    bar = tqdm(total=total, initial=step, desc=run_dir.name, disable=not progress, unit="step",
               dynamic_ncols=True, mininterval=1.0)
    method.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        lr = learning_rate(cfg, epoch)
        set_learning_rate(opt, lr)
        order = torch.randperm(n, generator=_generator(torch.device("cpu"), cfg.seed, epoch, 0)).to(device)
        g_aug = _generator(device, cfg.seed, epoch, 1, *([rank] if world > 1 else []))
        logs: dict[str, list] = {}
        for b in range(n_batches):
            idx = order[b * bs:(b + 1) * bs].chunk(world)[rank]  # this process's share, in rank order
            x = train_x[idx].float().div_(255)
            views = [to_memory_format(data.normalize(augment(x, g_aug)), channels_last)
                     for _ in range(method.n_views)]
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
        if not all(math.isfinite(v) for v in values["loss"]):
            raise FloatingPointError(f"{run_dir.name}: the loss became non-finite in epoch {epoch + 1}; "
                                     f"lower --lr (now {cfg.lr})")
        if not main:  # rank 0 evaluates and writes; the others wait for it
            dist.barrier()
            continue
        with open(metrics_path, "a") as f:
            first = step - n_batches + 1
            for i, loss_value in enumerate(values["loss"]):
                f.write(json.dumps({"kind": "step", "epoch": epoch + 1, "step": first + i, "lr": lr,
                                    "loss": loss_value}) + "\n")
            record = {"kind": "epoch", "epoch": epoch + 1, "lr": lr, "epoch_s": epoch_time,
                      "img_per_s": n_batches * bs / epoch_time,
                      **{k if k == "loss" else f"train_{k}": float(np.mean(v)) for k, v in values.items()},
                      **evaluate_epoch(method, data, cfg, device)}
            f.write(json.dumps(record) + "\n")
        wall += time.perf_counter() - t0
        save_atomic({"config": cfg.to_dict(), "epoch": epoch + 1, "step": step, "wall_s": wall,
                     "model": method.state_dict(), "opt": opt.state_dict(),
                     "metrics_bytes": metrics_path.stat().st_size}, ckpt_path)
        if progress:
            bar.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f}, kNN {record['knn']:.1f}%, "
                      f"z_std {record['z_std']:.3f} (1/sqrt(d) = {record['z_std_ref']:.3f})")
        dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    bar.close()
    if main:
        finish(method, data, cfg, device, run_dir, wall, prov)
    return run_dir


def finish(method, data: ImageData, cfg: Config, device, run_dir: Path, wall: float, prov: dict) -> dict:
    """Save the test features for t-SNE, run the linear probe and write ``result.json``."""
    t0 = time.perf_counter()
    method.eval()
    test_h, test_z = extract(method.embed, data.test, data, cfg.image_size, device)
    np.savez_compressed(run_dir / "features.npz", h=test_h.half().numpy(), z=test_z.half().numpy(),
                        y=data.test.y.numpy())
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    result = {"status": "done", "epochs": cfg.epochs, "knn": epochs[-1]["knn"], "knn_z": epochs[-1]["knn_z"],
              "knn_init": epochs[0]["knn"], "z_std": epochs[-1]["z_std"], "z_std_ref": epochs[-1]["z_std_ref"],
              "eff_rank": epochs[-1]["eff_rank"], "alignment": epochs[-1].get("alignment"),
              "uniformity": epochs[-1].get("uniformity"), "train_images": len(data.train), "test_images": len(data.test)}
    if cfg.probe == "seed":
        train_h, _ = extract(method.embed, data.train, data, cfg.image_size, device)
        train_h_flip, _ = extract(method.embed, data.train, data, cfg.image_size, device, flip=True)
        probe = linear_probe(train_h, train_h_flip, data.train.y, test_h, data.test.y, data.num_classes,
                             cfg.probe_epochs, cfg.probe_lr, cfg.probe_milestones, seed=cfg.seed, device=device)
        result.update(probe_last=probe["last"], probe_best=probe["best"], probe_curve=probe["curve"])
    if cfg.method == "supervised":
        with torch.no_grad():
            logits = torch.cat([method.classifier(h.to(device)).cpu() for h in test_h.split(1024)])
        result["test_acc"] = 100.0 * (logits.argmax(1) == data.test.y).float().mean().item()
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
    p = _Parser(prog="python -m sslnb.train", description="Train one run into a run directory.",
                allow_abbrev=False)
    p.add_argument("--preset", default="cpu", help="smoke | cpu | paper (default: cpu)")
    p.add_argument("--run-dir", help="the run directory (default: RUN_ROOT/<name from the config>)")
    p.add_argument("--run-root", default="runs", help="where runs live when --run-dir is not given")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--config", help="a config.json to train exactly (flags given as well override it)")
    for name in field_names():
        if name != "preset":
            p.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="VALUE", help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {k: parse_value(k, v) for k, v in vars(args).items()
                 if k in field_names() and k != "preset" and v is not None}
    if args.config:
        try:
            base = Config.from_dict(json.loads(Path(args.config).read_text()))
        except (OSError, ValueError) as e:
            raise ConfigError(f"--config {args.config} cannot be read: {e}") from None
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
        train(cfg, run_dir, progress=not args.quiet)
    except (ConfigError, DatasetUnavailable, FloatingPointError) as e:
        if first:
            print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
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
