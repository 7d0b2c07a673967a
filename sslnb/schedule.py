"""Train many runs at once on a box with several devices, then execute and build the book.

``python -m sslnb.schedule --preset paper --gpus 0,1,2,3`` (what ``make paper GPUS=0,1,2,3`` runs):

1. every run the chapters need (``sslnb.experiments.all_runs``) that has no ``result.json`` yet is
   queued, longest first; a run takes ``world_size`` devices (one for most of the study; more with
   ``--gpus-per-run``, trained by ``torchrun`` with DistributedDataParallel);
2. each run is a subprocess that sees only its devices (``CUDA_VISIBLE_DEVICES``), with its output in
   ``RUN_DIR/train.log``; a device is never given to two runs at once; a failed run does not stop the
   others;
3. when every run is done the chapters are executed with papermill (they find their runs finished)
   and the site is built; a summary table of every run ends the output.

Interrupt it at any point and run the same command again: finished runs are kept, unfinished ones
resume from their last checkpoint. Every start and end is logged in ``RUN_ROOT/schedule.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .runs import load_run, run_name, write_json_atomic


@dataclass
class Job:
    cfg: Config
    path: Path
    devices: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    status: str = "queued"  # queued | running | done | failed | kept (finished before)


def command(job: Job) -> list[str]:
    """``python -m sslnb.train`` for one process, ``torchrun`` for several."""
    train = ["-m", "sslnb.train", "--quiet", "--run-dir", str(job.path), "--config", str(job.path / "config.json")]
    n = job.cfg.world_size
    if n == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *train]


def _log(path: Path | None, **event) -> None:
    if path is not None:
        with open(path, "a") as f:
            f.write(json.dumps({"time": time.time(), **event}) + "\n")


def train_concurrently(pairs, devices: list[str | None], progress: bool = True, threads: int | None = None,
                       log_path: Path | None = None, poll_s: float = 1.0) -> list[Job]:
    """Train ``(config, run_dir)`` pairs as subprocesses sharing ``devices``.

    ``devices`` are device ids (``"0"``, ``"1"``, ...; each job's ``CUDA_VISIBLE_DEVICES``) or ``None``
    for plain CPU slots. A job starts when ``world_size`` devices are free, in queue order, except that a
    smaller job may start while a larger one waits for devices. ``threads`` sets each process's CPU
    threads (default: the cores shared evenly). Returns the jobs with their status and seconds.
    """
    from tqdm.auto import tqdm

    from .runs import _steps_done
    from .train import steps_per_epoch

    jobs = [Job(cfg, Path(path)) for cfg, path in pairs]
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
            bar.update(_steps_done(job.path) - bar.n)
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
            total.write(f"{job.path.name}: {job.status}{where} in {job.seconds / 60:.1f} min"
                        + ("" if code == 0 else f" (exit {code}; see {job.path}/train.log)"))
    total.close()
    return jobs


def _start(job: Job, threads: int) -> None:
    job.path.mkdir(parents=True, exist_ok=True)
    if not (job.path / "config.json").exists():
        write_json_atomic(job.path / "config.json", job.cfg.to_dict())
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if job.devices[0] is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(job.devices)
    with open(job.path / "train.log", "a") as log:
        job.proc = subprocess.Popen(command(job), stdout=log, stderr=subprocess.STDOUT, env=env)
    job.started = time.time()
    job.status = "running"


def summary(paths: list[Path], jobs: list[Job]) -> str:
    """A Markdown table of every run: status, kNN and linear-probe accuracy, wall time, devices."""
    by_path = {j.path: j for j in jobs}
    lines = ["| run | status | kNN % | linear % | wall min | devices |", "|---|---|---:|---:|---:|---|"]
    for path in paths:
        job = by_path.get(path)
        result = load_run(path).result if (path / "config.json").exists() else {}
        status = job.status if job else ("kept" if result.get("status") == "done" else "missing")
        fmt = lambda v: "" if v is None else f"{v:.1f}"  # noqa: E731
        wall = result.get("wall_s")
        devices = ",".join(d for d in job.devices if d is not None) if job else ""
        lines.append(f"| {path.name} | {status} | {fmt(result.get('knn'))} | {fmt(result.get('probe_best'))} "
                     f"| {fmt(wall / 60 if wall else None)} | {devices} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from .book import BookError, build, execute
    from .config import ConfigError
    from .experiments import all_runs

    p = argparse.ArgumentParser(prog="python -m sslnb.schedule", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--gpus", default="", help="device ids to share out, e.g. 0,1,2,3 (empty: CPU slots)")
    p.add_argument("--cpu-slots", type=int, default=2, help="runs at once when --gpus is empty")
    p.add_argument("--gpus-per-run", type=int, default=1, help="devices (torchrun processes) per run")
    p.add_argument("--dataset", default=None)
    p.add_argument("--device", default="auto", help="the runs' device (auto: cuda where visible)")
    p.add_argument("--run-root", default="runs")
    p.add_argument("--data-root", default="data")
    p.add_argument("--no-book", action="store_true", help="train only; do not execute and build the book")
    p.add_argument("--stage-dir", default=None, help="where chapters are executed (default: _stage)")
    p.add_argument("--out-dir", default=None, help="the site goes to OUT_DIR/_build/html (default: the repository)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    devices = [d.strip() for d in args.gpus.split(",") if d.strip()] or [None] * args.cpu_slots
    run_root = Path(args.run_root).resolve()
    data_root = str(Path(args.data_root).resolve())
    try:
        configs = all_runs(args.preset, args.dataset, args.device, data_root)
        if args.gpus_per_run > 1:
            configs = [c.replace(world_size=args.gpus_per_run) for c in configs]
        paths = [run_root / run_name(c) for c in configs]
        missing = [(c, p_) for c, p_ in zip(configs, paths) if not (p_ / "result.json").exists()]
        print(f"{len(configs)} runs at preset {args.preset}: {len(configs) - len(missing)} finished, "
              f"{len(missing)} to train on {len(devices)} device(s) {args.gpus or '(CPU)'}", flush=True)
        run_root.mkdir(parents=True, exist_ok=True)
        jobs = train_concurrently(missing, devices, progress=not args.quiet, log_path=run_root / "schedule.jsonl")
        table = summary(paths, jobs)
        (run_root / "summary.md").write_text(table + "\n")
        failed = [j for j in jobs if j.status == "failed"]
        if not failed and not args.no_book:
            params = {"preset": args.preset, "run_root": str(run_root), "data_root": data_root,
                      "devices": args.device}
            if args.dataset:
                params["dataset"] = args.dataset
            from .book import ROOT, STAGE

            stage_dir = Path(args.stage_dir) if args.stage_dir else STAGE
            execute(params, stage_dir=stage_dir)
            build(stage_dir=stage_dir, out_dir=Path(args.out_dir) if args.out_dir else ROOT)
        print("\n" + table)
        if failed:
            print(f"\n{p.prog}: {len(failed)} run(s) failed (logs above); run the same command again to retry "
                  f"them; the finished runs are kept", file=sys.stderr)
            return 1
    except (BookError, ConfigError, ValueError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to continue (finished runs are kept)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
