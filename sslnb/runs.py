"""The run-directory contract, and launching the runs a chapter needs.

A run directory holds everything about one training run::

    config.json      the full Config (the run's identity: same config, same directory name)
    metrics.jsonl    one JSON record per line: {"kind": "step", ...} and {"kind": "epoch", ...}
    checkpoint.pt    model, optimiser and progress, written atomically after every epoch
    features.npz     test-set features for t-SNE: h (last conv), z (FC/projection), y (labels)
    provenance.json  git commit, versions, device, threads, wall time, command
    result.json      written last: final kNN, linear probe (last and best), collapse diagnostics

A run without ``result.json`` is unfinished; ``launch`` resumes it from its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import Config

# Fields that do not change what is computed, so they do not enter a run's identity.
_NOT_IDENTITY = ("device", "preset", "data_root", "download", "channels_last", "compile")


class LaunchError(RuntimeError):
    """A run could not be trained; the message is one line with the run's own error."""


def run_name(cfg: Config) -> str:
    """A readable, unique directory name: ``byol-digits-111-normal-s0-1a2b3c4d``."""
    # Only settings that differ from the defaults enter the digest, so that adding a new setting (with a
    # default that keeps the old behaviour) does not rename every existing run.
    default = Config()
    ident = {k: v for k, v in cfg.to_dict().items()
             if k not in _NOT_IDENTITY and v != getattr(default, k)}
    if cfg.dataset == "digits":  # a new rendering of the embedded dataset is a new run
        from .data import DIGITS_VERSION

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


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half-written file."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
    import torch

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
    import torch

    return {"git_commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "device_name": device_name(device), "host": platform.node(),
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


# ---------------------------------------------------------------------- reading runs
@dataclass
class Run:
    """A run directory as read back. ``config``, ``result`` and ``provenance`` are loaded eagerly."""

    path: Path
    config: Config
    result: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    _parsed: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def done(self) -> bool:
        return self.result.get("status") == "done"

    def records(self, kind: str = "epoch") -> list[dict]:
        """The metrics records of one kind (``step`` or ``epoch``), in order (parsed once per file
        version: plots ask for them many times)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        stat = path.stat()
        version = (stat.st_mtime_ns, stat.st_size)
        if self._parsed.get("version") != version:
            parsed = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self._parsed = {"version": version, "records": parsed}
        return [rec for rec in self._parsed["records"] if rec.get("kind") == kind]

    def metric(self, name: str, kind: str = "epoch") -> tuple[list, list]:
        """(x, values) of one metric; x is the epoch for epoch records, the step for step records."""
        xs, ys = [], []
        for r in self.records(kind):
            if name in r and r[name] is not None:
                xs.append(r["epoch" if kind == "epoch" else "step"])
                ys.append(r[name])
        return xs, ys

    def features(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "features.npz") as f:
            return {k: f[k] for k in f.files}

    def caption(self) -> str:
        """One line of provenance for a figure or a table."""
        p, c = self.provenance, self.config
        wall = self.result.get("wall_s")
        wall = f", {wall / 60:.1f} min" if wall else ""
        return (f"{self.name}: preset {c.preset or 'custom'}, {c.dataset}, {c.network} width {c.width}, "
                f"{c.epochs} epochs; {p.get('device_name', '?')}, commit {p.get('git_commit', '?')}{wall}")


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json)")
    cfg = Config.from_dict(json.loads((path / "config.json").read_text()))
    read = lambda name: json.loads((path / name).read_text()) if (path / name).exists() else {}  # noqa: E731
    return Run(path, cfg, read("result.json"), read("provenance.json"))


def find_runs(run_root: str | Path = "runs", done: bool = True, **where) -> list[Run]:
    """Every run under ``run_root`` whose config matches ``where`` (field=value), sorted by name."""
    root = Path(run_root)
    runs = []
    for cfg_path in sorted(root.glob("*/config.json")):
        run = load_run(cfg_path.parent)
        if done and not run.done:
            continue
        if all(getattr(run.config, k) == v for k, v in where.items()):
            runs.append(run)
    return runs


# ---------------------------------------------------------------------- launching
def launch(configs, run_root: str | Path = "runs", progress: bool = True, jobs: int = 1) -> list[Run]:
    """Make sure every config has a finished run under ``run_root``; train only what is missing.

    Finished runs (same config, same directory) are reused as they are; interrupted ones resume from
    their checkpoint. With ``jobs`` > 1 the missing runs train in that many subprocesses at once, each
    with one thread (on a 2-core laptop two single-thread runs finish sooner than two two-thread runs
    one after the other), with one progress bar per run. Returns the runs in the order of ``configs``.
    """
    configs = [configs] if isinstance(configs, Config) else list(configs)
    root = Path(run_root)
    paths = [root / run_name(cfg) for cfg in configs]
    missing = [(cfg, path) for cfg, path in zip(configs, paths) if not (path / "result.json").exists()]
    if missing and jobs > 1 and len(missing) > 1:
        _train_in_subprocesses(missing, jobs, progress)
    else:
        from .train import train

        for i, (cfg, path) in enumerate(missing):
            if progress:
                print(f"[{i + 1}/{len(missing)}] training {path}", flush=True)
            train(cfg, path, progress=progress)
    runs = [load_run(path) for path in paths]
    failed = [run for run in runs if not run.done]
    if failed:
        log = failed[0].path / "train.log"
        lines = log.read_text().strip().splitlines() if log.exists() else []
        reason = lines[-1] if lines else "no log"
        raise LaunchError(f"{len(failed)} run(s) did not finish; {failed[0].name}: {reason}")
    return runs


def _steps_done(path: Path) -> int:
    try:
        with open(path / "metrics.jsonl", "rb") as f:
            return f.read().count(b'"kind": "step"')
    except OSError:
        return 0


def _train_in_subprocesses(missing, jobs: int, progress: bool) -> None:
    """Train (config, path) pairs with ``python -m sslnb.train`` subprocesses, ``jobs`` at a time, one
    CPU thread each (``sslnb.schedule`` shares devices the same way on a GPU box)."""
    from .schedule import train_concurrently

    train_concurrently(missing, [None] * jobs, progress=progress, threads=1)
