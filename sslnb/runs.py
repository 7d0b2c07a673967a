"""Finished runs read back, and the runs a chapter needs trained: one, or many at a time.

:func:`load_run` and :func:`find_runs` read run directories (their files: :mod:`sslnb.rundir`);
:func:`launch` makes sure a list of configs has finished runs, training only what is missing, in this
process or in subprocesses (:func:`train_concurrently`, which also shares the GPUs of a box among runs
for ``sslnb.schedule``).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import Config, ConfigError, check_known
from .data import steps_per_epoch
from .dist import die_with_parent
from .rundir import RunDirError, finished, read_config, read_records, run_name, steps_done, write_json_atomic
from .grid import plan, train_grid
from .train import train


class LaunchError(RuntimeError):
    """A run could not be trained; the message is one line with the run's own error."""


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
            self._parsed = {"version": version, "records": read_records(self.path)}
        return [rec for rec in self._parsed["records"] if rec.get("kind") == kind]

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch of this run."""
        return steps_per_epoch(self.config)

    def metric(self, name: str, kind: str = "epoch") -> tuple[list, list]:
        """(x, values) of one metric; x is the epoch for epoch records, the step for step records."""
        xs, ys = [], []
        for r in self.records(kind):
            if name in r and r[name] is not None:
                xs.append(r["epoch" if kind == "epoch" else "step"])
                ys.append(r[name])
        return xs, ys

    def features(self) -> dict[str, np.ndarray]:
        """Test-set features for t-SNE: ``h`` (N, D) last conv, ``z`` (N, d) projection, ``y`` (N,) labels.
        A missing or damaged ``features.npz`` is one line naming it and what to do."""
        path = self.path / "features.npz"
        try:
            with np.load(path) as f:
                return {k: f[k] for k in ("h", "z", "y")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            text = str(e).strip().splitlines()
            why = ("is missing: the run has no features to draw" if isinstance(e, FileNotFoundError) else
                   f"cannot be read ({type(e).__name__}: {text[0][:80] if text else 'damaged'})")
            raise RunDirError(f"{path} {why}; move the run aside (mv {self.path} {self.path}.damaged) and run the "
                              f"same command again to train it again") from None

    def model_state(self) -> dict[str, torch.Tensor]:
        """The trained model's parameters and buffers from ``checkpoint.pt`` (or, in a run fetched from a
        bundle, ``model.pt``: the model alone), on the CPU (loaded with ``weights_only=True``: a checkpoint
        holds only tensors and plain data)."""
        path = self.path / "checkpoint.pt"
        if not path.exists() and (self.path / "model.pt").exists():
            path = self.path / "model.pt"
        return torch.load(path, map_location="cpu", weights_only=True)["model"]

    def caption(self) -> str:
        """One line of provenance for a figure or a table."""
        p, c = self.provenance, self.config
        wall = self.result.get("wall_s")
        wall = f", {wall / 60:.1f} min" if wall else ""
        return (f"{self.name}: preset {c.preset or 'custom'}, {c.dataset}, {c.network} width {c.width}, "
                f"{c.epochs} epochs; {p.get('device_name', '?')}, commit {p.get('git_commit', '?')}{wall}")


def load_run(path: str | Path) -> Run:
    """The run in directory ``path``. A missing or unreadable ``config.json`` (or result or provenance)
    is a one-line error naming the file."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json)")
    cfg = read_config(path / "config.json")

    def read(name: str) -> dict:
        try:
            value = json.loads((path / name).read_text()) if (path / name).exists() else {}
        except ValueError as e:
            raise ConfigError(f"{path / name} is not valid JSON ({e}); move the run aside") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{path / name} does not hold a JSON object; move the run aside")
        return value

    return Run(path, cfg, read("result.json"), read("provenance.json"))


def find_runs(run_root: str | Path = "runs", done: bool = True, **where) -> list[Run]:
    """Every run under ``run_root`` whose config matches ``where`` (field=value), sorted by name.

    A filter that is not a Config field is refused, naming the nearest; a run directory that cannot be
    read is skipped with a warning naming it (the other runs are still listed)."""
    check_known(where)
    runs = []
    for cfg_path in sorted(Path(run_root).glob("*/config.json")):
        try:
            run = load_run(cfg_path.parent)
        except (ConfigError, OSError) as e:
            warnings.warn(f"skipped {cfg_path.parent}: {e}", stacklevel=2)
            continue
        if done and not run.done:
            continue
        if all(getattr(run.config, k) == v for k, v in where.items()):
            runs.append(run)
    return runs


# ---------------------------------------------------------------------- launching
def missing_runs(configs, run_root: str | Path = "runs") -> list[tuple[Config, Path]]:
    """``(config, run directory)`` of each config without a finished run under ``run_root``, in order,
    each run once (a config asked for twice is trained once)."""
    seen, missing = set(), []
    for cfg in configs:
        path = Path(run_root) / run_name(cfg)
        if path not in seen and not finished(path):
            missing.append((cfg, path))
        seen.add(path)
    return missing


def use_grids(grid: bool | None = None) -> bool:
    """Whether :func:`launch` trains grids of runs as one batched network: ``grid`` if given, else
    the environment's ``SSLNB_GRID`` (``0`` turns grids off; ``make book GRID=0``), else yes."""
    return grid if grid is not None else os.environ.get("SSLNB_GRID", "1") != "0"


def launch(configs, run_root: str | Path = "runs", progress: bool = True, jobs: int = 1,
           grid: bool | None = None) -> list[Run]:
    """Make sure every config has a finished run under ``run_root``; train only what is missing.

    Finished runs (same config, same directory) are reused as they are; interrupted ones resume from
    their checkpoint. Missing runs that differ only in :data:`sslnb.grid.GRID_FIELDS` (seed, BN code,
    temperature, pipeline, ...) train as grids, each one batched network in one process
    (:mod:`sslnb.grid`; ``grid=False`` or ``SSLNB_GRID=0`` turns this off), the others alone. With ``jobs`` > 1 the grids and runs train in that many subprocesses at
    once, each with one thread (on a 2-core laptop two single-thread processes finish sooner than two
    two-thread ones one after the other), with one progress bar each. Returns the runs in the order of
    ``configs``.
    """
    configs = [configs] if isinstance(configs, Config) else list(configs)
    paths = [Path(run_root) / run_name(cfg) for cfg in configs]
    missing = missing_runs(configs, run_root)
    grids, alone = plan(missing, parts=jobs) if use_grids(grid) else ([], missing)
    if jobs > 1 and missing:
        train_concurrently([*grids, *alone], [None] * jobs, progress=progress, threads=1)
    else:
        for i, members in enumerate([*grids, *alone]):
            if isinstance(members, list):
                if progress:
                    print(f"[{i + 1}/{len(grids) + len(alone)}] training a grid of {len(members)}: "
                          f"{', '.join(p.name for _, p in members)}", flush=True)
                train_grid([c for c, _ in members], [p for _, p in members], progress=progress, wait=True)
            else:
                cfg, path = members
                if progress:
                    print(f"[{i + 1}/{len(grids) + len(alone)}] training {path}", flush=True)
                train(cfg, path, progress=progress, wait=True)
    runs = [load_run(path) for path in paths]
    failed = [run for run in runs if not run.done]
    if failed:
        raise LaunchError(f"{len(failed)} run(s) did not finish; {failed[0].name}: {_last_log_line(failed[0].path)}")
    return runs


def _last_log_line(path: Path) -> str:
    """The last line of a run's ``train.log`` (following a grid run's pointer to its grid's log)."""
    log = path / "train.log"
    lines = log.read_text().strip().splitlines() if log.exists() else []
    if lines and lines[-1].startswith(GRID_LOG_NOTE):
        grid_log = Path(lines[-1].rsplit(" ", 1)[-1])
        lines = grid_log.read_text().strip().splitlines() if grid_log.exists() else lines
    return lines[-1] if lines else "no log"


# ---------------------------------------------------------------------- many runs in subprocesses
GRID_LOG_NOTE = "trained in a grid; its log is"  # the train.log of a grid's other runs
@dataclass
class Job:
    cfg: Config
    path: Path
    grid: list[tuple[Config, Path]] = field(default_factory=list)  # every run of a grid job (path: the first)
    devices: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    status: str = "queued"  # queued | running | done | failed | kept (finished before)


def launcher(world_size: int = 1) -> list[str]:
    """The start of a command that runs ``-m MODULE ...`` in ``world_size`` processes: this Python for
    one, ``torchrun`` (``python -m torch.distributed.run --standalone``) for several."""
    if world_size == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}"]


def grid_command(run_dirs) -> list[str]:
    """The command that trains ``run_dirs`` (each with its ``config.json``) as one grid (:mod:`sslnb.grid`)."""
    return [sys.executable, "-m", "sslnb.grid", "--quiet", "--wait", *map(str, run_dirs)]


def train_command(run_dir: Path, world_size: int = 1) -> list[str]:
    """The command that trains ``run_dir`` from its ``config.json``, in ``world_size`` processes (waiting
    for another process that may be training the same run, instead of training it twice)."""
    return [*launcher(world_size), "-m", "sslnb.train", "--quiet", "--wait", "--run-dir", str(run_dir),
            "--config", str(Path(run_dir) / "config.json")]


def _log(path: Path | None, **event) -> None:
    if path is not None:
        with open(path, "a") as f:
            f.write(json.dumps({"time": time.time(), **event}) + "\n")


def train_concurrently(pairs, devices: list[str | None], progress: bool = True, threads: int | None = None,
                       log_path: Path | None = None, poll_s: float = 1.0) -> list[Job]:
    """Train ``(config, run_dir)`` pairs, and grids (lists of such pairs, :mod:`sslnb.grid`), as
    subprocesses sharing ``devices``.

    ``devices`` are device ids (``"0"``, ``"1"``, ...; each job's ``CUDA_VISIBLE_DEVICES``) or ``None``
    for plain CPU slots. A job starts when ``world_size`` devices are free, in queue order, except that a
    smaller job may start while a larger one waits for devices. ``threads`` sets each process's CPU
    threads (default: the cores shared evenly). Each run's output goes to ``RUN_DIR/train.log``; a failed
    run does not stop the others (a grid's output goes to its first run's log, and the others' logs say
    so). Returns the jobs with their status and seconds.
    """
    jobs = [Job(p[0][0], Path(p[0][1]), [(c, Path(q)) for c, q in p]) if isinstance(p, list) else Job(p[0], Path(p[1]))
            for p in pairs]
    too_big = [j for j in jobs if j.cfg.world_size > len(devices)]
    if too_big:
        raise ValueError(f"{too_big[0].path.name} needs {too_big[0].cfg.world_size} devices; "
                         f"only {len(devices)} were given")
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, len(devices)))
    free = list(devices)
    queue, running = list(jobs), []
    total = tqdm(total=len(jobs), desc="runs", unit="run", disable=not progress, position=0)
    bars = {}
    while queue or running:
        for job in list(queue):
            if job.cfg.world_size <= len(free):
                job.devices = [free.pop(0) for _ in range(job.cfg.world_size)]
                queue.remove(job)
                _start(job, threads)
                running.append(job)
                _log(log_path, event="start", run=job.path.name, devices=job.devices)
                bars[job.path] = tqdm(total=job.cfg.epochs * steps_per_epoch(job.cfg), desc=job.path.name[:40],
                                      unit="step", disable=not progress, leave=False,
                                      position=1 + len(running) % max(1, len(devices)))
        time.sleep(poll_s)
        for job in list(running):
            bar = bars[job.path]
            bar.update(steps_done(job.path) - bar.n)
            code = job.proc.poll()
            if code is None:
                continue
            job.seconds = time.time() - job.started
            job.status = "done" if code == 0 else "failed"
            running.remove(job)
            free.extend(job.devices)
            bar.close()
            total.update(1)
            _log(log_path, event="end", run=job.path.name, devices=job.devices, status=job.status, code=code)
            where = f" on device {','.join(job.devices)}" if job.devices[0] is not None else ""
            name = f"grid of {len(job.grid)} ({job.path.name}, ...)" if job.grid else job.path.name
            total.write(f"{name}: {job.status}{where} in {job.seconds / 60:.1f} min"
                        + ("" if code == 0 else f" (exit {code}; see {job.path}/train.log)"))
    total.close()
    return jobs


def _start(job: Job, threads: int) -> None:
    for cfg, path in job.grid or [(job.cfg, job.path)]:
        path.mkdir(parents=True, exist_ok=True)
        if not (path / "config.json").exists():
            write_json_atomic(path / "config.json", cfg.to_dict())
        if path != job.path:
            with open(path / "train.log", "a") as log:
                log.write(f"{GRID_LOG_NOTE} {job.path / 'train.log'}\n")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if job.devices[0] is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(job.devices)
    command = grid_command([p for _, p in job.grid]) if job.grid else train_command(job.path, job.cfg.world_size)
    with open(job.path / "train.log", "a") as log:  # it stops with this process; the same command resumes it
        job.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=functools.partial(die_with_parent, os.getpid()))
    job.started = time.time()
    job.status = "running"
