"""Train many runs at once on a box with several devices, then execute and build the book.

``python -m sslnb.schedule --preset paper --gpus 0,1,2,3`` (what ``make paper GPUS=0,1,2,3`` runs):

1. every run the chapters need (``sslnb.experiments.all_runs``) that has no ``result.json`` yet is
   queued, longest first; a run takes ``world_size`` devices (one for most of the study; more with
   ``--gpus-per-run``, trained by ``torchrun`` with DistributedDataParallel);
2. each run is a subprocess that sees only its devices (``CUDA_VISIBLE_DEVICES``), with its output in
   ``RUN_DIR/train.log`` (``sslnb.runs.train_concurrently``, which ``launch`` also uses on a laptop); a
   device is never given to two runs at once; a failed run does not stop the others;
3. when every run is done the chapters are executed with papermill (they find their runs finished)
   and the site is built; a summary table of every run ends the output.

Interrupt it at any point and run the same command again: finished runs are kept, unfinished ones
resume from their last checkpoint. Every start and end is logged in ``RUN_ROOT/schedule.jsonl``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import experiments
from .book import ROOT, STAGE, BookError, build, execute
from .config import ConfigError
from .rundir import run_name
from .runs import Job, load_run, missing_runs, train_concurrently


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
        configs = experiments.all_runs(args.preset, args.dataset, args.device, data_root)
        if args.gpus_per_run > 1:
            configs = [c.replace(world_size=args.gpus_per_run) for c in configs]
        paths = [run_root / run_name(c) for c in configs]
        missing = missing_runs(configs, run_root)
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
