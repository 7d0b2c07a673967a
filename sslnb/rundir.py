"""The run directory's files, as the trainer writes them (``sslnb.runs`` reads them back).

A run directory holds everything about one training run::

    config.json      the full Config (the run's identity: same config, same directory name)
    metrics.jsonl    one JSON record per line: {"kind": "step", ...} and {"kind": "epoch", ...}
    checkpoint.pt    model, optimiser and progress, written atomically after every epoch
    features.npz     test-set features for t-SNE: h (last conv), z (FC/projection), y (labels)
    provenance.json  git commit, versions, device, threads, wall time, command
    result.json      written last: final kNN, linear probe (last and best), collapse diagnostics

A run without ``result.json`` is unfinished; the trainer resumes it from its checkpoint. Every write
here is atomic (a temporary file, then a rename), so a crash never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from .config import Config, ConfigError, field_names
from .data import DIGITS_VERSION

# Fields that do not change what is computed, so they do not enter a run's identity.
NOT_IDENTITY = ("device", "preset", "data_root", "download", "channels_last", "compile")


def run_name(cfg: Config) -> str:
    """A readable, unique directory name: ``byol-digits-111-normal-s0-1a2b3c4d``."""
    # Only settings that differ from the defaults enter the digest, so that adding a new setting (with a
    # default that keeps the old behaviour) does not rename every existing run.
    default = Config()
    ident = {k: v for k, v in cfg.to_dict().items()
             if k not in NOT_IDENTITY and v != getattr(default, k)}
    if cfg.dataset == "digits":  # a new rendering of the embedded dataset is a new run
        ident["digits_version"] = DIGITS_VERSION
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    parts = [cfg.method, cfg.dataset]
    if cfg.method == "byol":
        parts.append(cfg.bn_code)
    elif cfg.method == "simclr":
        parts += [cfg.simclr_loss, f"t{cfg.temperature:g}"]
    elif cfg.method == "insdis":
        parts += [cfg.insdis_loss + ("-mlp" if cfg.insdis_head == "mlp" else ""), f"t{cfg.temperature:g}"]
    parts += [cfg.augment.replace("+", "plus"), f"e{cfg.epochs}", f"s{cfg.seed}", digest]
    return "-".join(parts)


# ---------------------------------------------------------------------- atomic writes
def write_json_atomic(path: Path, obj) -> None:
    """``obj`` as JSON into ``path``, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def save_atomic(path: Path, obj) -> None:
    """``torch.save(obj)`` into ``path``, atomically (same argument order as :func:`write_json_atomic`)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- the run's identity
def config_difference(run_dir: Path, cfg: Config) -> str | None:
    """None when ``run_dir`` holds no config or the same run as ``cfg``; otherwise the first field that
    differs, as ``"field=old, asked new"``."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    old = Config.from_dict(json.loads(path.read_text()))
    diff = [k for k in field_names() if k not in NOT_IDENTITY and getattr(old, k) != getattr(cfg, k)]
    return f"{diff[0]}={getattr(old, diff[0])!r}, asked {getattr(cfg, diff[0])!r}" if diff else None


def claim(run_dir: Path, cfg: Config) -> None:
    """Write ``cfg`` into ``run_dir`` as its identity, or check that it is the run already there."""
    diff = config_difference(run_dir, cfg)
    if diff:
        raise ConfigError(f"{run_dir} holds a run with a different config ({diff}); choose another --run-dir")
    if not (Path(run_dir) / "config.json").exists():
        write_json_atomic(Path(run_dir) / "config.json", cfg.to_dict())


# ---------------------------------------------------------------------- metrics.jsonl
def read_records(run_dir: Path) -> list[dict]:
    """Every record of ``metrics.jsonl`` in order (empty when there is none yet): the one reader."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def steps_done(run_dir: Path) -> int:
    """Optimiser steps recorded so far (for progress bars of runs training in other processes). A line
    being written at this moment is not counted."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines(keepends=True)
    except OSError:
        return 0
    count = 0
    for line in lines:
        if not line.endswith("\n"):
            break
        try:
            count += json.loads(line).get("kind") == "step"
        except ValueError:
            break
    return count


# ---------------------------------------------------------------------- provenance
def git_commit(cwd: Path | None = None) -> str:
    root = Path(cwd or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def device_name(device) -> str:
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def provenance(device) -> dict:
    return {"git_commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "device_name": device_name(device), "host": platform.node(),
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
